//! What the scaler last decided, written to a file after every sync so other tools can show
//! it: `scaler get` prints it the way `kubectl get hpa` prints KEDA's HPA, `scaler watch`
//! follows it, and the load tool's lag lines are read beside it.

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// The HPA's status as the scaler keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetState {
    /// KEDA names the HPA it makes `keda-hpa-<ScaledObject name>`.
    pub name: String,
    pub reference: String,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub lag_threshold: i64,
    /// The group's total lag at the last sync, and the metric KEDA reported from it.
    pub lag: i64,
    pub metric: i64,
    pub replicas: u32,
    /// The highest count since the scaler started.
    pub peak_replicas: u32,
    pub reason: String,
    /// Unix milliseconds.
    pub started_ms: u64,
    pub updated_ms: u64,
    /// The last changes, oldest first.
    pub events: Vec<ScaleChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleChange {
    pub at_ms: u64,
    pub from: u32,
    pub to: u32,
    pub lag: i64,
    pub reason: String,
}

/// How many changes the state keeps.
const EVENTS_KEPT: usize = 20;

impl FleetState {
    pub fn record(&mut self, from: u32, to: u32, reason: &str) {
        if from != to {
            self.events.push(ScaleChange {
                at_ms: self.updated_ms,
                from,
                to,
                lag: self.lag,
                reason: reason.to_string(),
            });
            let excess = self.events.len().saturating_sub(EVENTS_KEPT);
            self.events.drain(..excess);
        }
        self.peak_replicas = self.peak_replicas.max(to);
        self.replicas = to;
        self.reason = reason.to_string();
    }

    /// `kubectl get hpa`'s columns, then the last changes.
    pub fn table(&self, now_ms: u64) -> String {
        let average = if self.replicas == 0 {
            "<unknown>".to_string()
        } else {
            (self.metric / i64::from(self.replicas)).to_string()
        };
        let targets = format!("{average}/{} (avg)", self.lag_threshold);
        let age = humantime::format_duration(std::time::Duration::from_secs(
            now_ms.saturating_sub(self.started_ms) / 1000,
        ))
        .to_string()
        .replace(' ', "");
        let mut out = format!(
            "{:<18} {:<20} {:<20} {:>7} {:>7} {:>8}   {}\n",
            "NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS", "AGE"
        );
        out += &format!(
            "{:<18} {:<20} {:<20} {:>7} {:>7} {:>8}   {}\n",
            self.name,
            self.reference,
            targets,
            self.min_replicas,
            self.max_replicas,
            self.replicas,
            age
        );
        out += &format!(
            "\nlag {} (reported {}), {}\n",
            self.lag, self.metric, self.reason
        );
        for event in &self.events {
            out += &format!(
                "  {} ago: {} -> {} replicas at lag {}: {}\n",
                humantime::format_duration(std::time::Duration::from_secs(
                    now_ms.saturating_sub(event.at_ms) / 1000
                )),
                event.from,
                event.to,
                event.lag,
                event.reason
            );
        }
        out
    }

    /// Written whole to a temporary file and renamed, so a reader never sees half of it.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(temporary, path)
    }

    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read(path)?;
        serde_json::from_slice(&text).map_err(std::io::Error::other)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> FleetState {
        FleetState {
            name: "keda-hpa-worker".into(),
            reference: "Deployment/worker".into(),
            min_replicas: 1,
            max_replicas: 12,
            lag_threshold: 2500,
            lag: 10_000,
            metric: 10_000,
            replicas: 1,
            peak_replicas: 1,
            reason: String::new(),
            started_ms: 1_000,
            updated_ms: 61_000,
            events: Vec::new(),
        }
    }

    #[test]
    fn the_view_has_kubectl_get_hpa_columns_and_the_changes() {
        let mut state = state();
        state.record(1, 4, "ScaleUpLimit");
        let table = state.table(121_000);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{table}");
        for column in [
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE",
        ] {
            assert!(lines[0].contains(column), "{column} in {table}");
        }
        assert!(lines[1].contains("keda-hpa-worker"), "{table}");
        assert!(
            lines[1].contains("2500/2500 (avg)"),
            "10000 over 4 replicas: {table}"
        );
        assert!(lines[1].trim_end().ends_with("2m"), "{table}");
        assert!(
            table.contains("1 -> 4 replicas at lag 10000: ScaleUpLimit"),
            "{table}"
        );
        assert_eq!(state.peak_replicas, 4);
    }

    #[test]
    fn a_saved_state_loads_back_the_same() {
        let dir = std::env::temp_dir().join(format!("scaler-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let path = dir.join("hpa.json");
        let state = state();
        state.save(&path).expect("saved");
        assert_eq!(FleetState::load(&path).expect("loaded"), state);
        let _ = std::fs::remove_dir_all(dir);
    }
}
