//! When each request is meant to be sent. The load is open-loop: send times come from the
//! target rate alone, never from how fast the server answers, and latency is measured from
//! these intended times, so a stalled server cannot hide its delay (no coordinated omission).

use std::time::Duration;

/// One stage: the rate moves linearly from the previous stage's rate to `target` over
/// `duration` (k6's convention). A constant rate is a stage that starts at its own target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub duration: Duration,
    pub target: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    start_rate: f64,
    stages: Vec<Stage>,
}

impl Schedule {
    pub fn constant(rate: f64, duration: Duration) -> Self {
        Self {
            start_rate: rate,
            stages: vec![Stage {
                duration,
                target: rate,
            }],
        }
    }

    /// Ramps from 0 through `stages`.
    pub fn ramp(stages: Vec<Stage>) -> Self {
        Self {
            start_rate: 0.0,
            stages,
        }
    }

    /// Parses `30s:100,60s:2000,30s:0`: over 30 s ramp to 100/s, then to 2000/s over 60 s,
    /// then down to 0 over 30 s.
    pub fn parse_stages(text: &str) -> Result<Self, String> {
        let stages = text
            .split(',')
            .map(|part| {
                let (duration, rate) = part
                    .split_once(':')
                    .ok_or_else(|| format!("stage {part:?} is not DURATION:RATE, e.g. 30s:100"))?;
                let duration = infra::config::parse_duration(duration.trim())
                    .map_err(|e| format!("stage {part:?}: duration {e}"))?;
                if duration.is_zero() {
                    return Err(format!("stage {part:?}: duration must be longer than 0"));
                }
                let target: f64 = rate
                    .trim()
                    .parse()
                    .map_err(|_| format!("stage {part:?}: rate {rate:?} is not a number"))?;
                if !(target.is_finite() && target >= 0.0) {
                    return Err(format!("stage {part:?}: rate must be 0 or more"));
                }
                Ok(Stage { duration, target })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if stages.is_empty() {
            return Err("give at least one stage".into());
        }
        Ok(Self::ramp(stages))
    }

    pub fn duration(&self) -> Duration {
        self.stages.iter().map(|s| s.duration).sum()
    }

    /// The target rate at `t` since the start.
    pub fn rate_at(&self, t: Duration) -> f64 {
        let mut from = self.start_rate;
        let mut elapsed = Duration::ZERO;
        for stage in &self.stages {
            if t < elapsed + stage.duration {
                let x = (t - elapsed).as_secs_f64() / stage.duration.as_secs_f64();
                return from + (stage.target - from) * x;
            }
            elapsed += stage.duration;
            from = stage.target;
        }
        0.0
    }

    /// Offsets from the start at which requests are due, in order: the k-th request is sent
    /// when the integral of the rate reaches k. Lazy, so hour-long runs cost no memory.
    pub fn send_times(&self) -> SendTimes<'_> {
        SendTimes {
            schedule: self,
            stage: 0,
            from: self.start_rate,
            stage_start: 0.0,
            due_before: 0.0,
            next: 1.0,
        }
    }
}

pub struct SendTimes<'a> {
    schedule: &'a Schedule,
    stage: usize,
    /// Rate at the start of the current stage.
    from: f64,
    stage_start: f64,
    /// Requests due before the current stage (fractional).
    due_before: f64,
    /// The number of the next request.
    next: f64,
}

impl Iterator for SendTimes<'_> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        loop {
            let stage = self.schedule.stages.get(self.stage)?;
            let d = stage.duration.as_secs_f64();
            let due = (self.from + stage.target) / 2.0 * d; // the integral over the stage
            if self.next <= self.due_before + due + 1e-9 {
                // Solve from*t + slope*t²/2 = need for t in [0, d].
                let need = self.next - self.due_before;
                let slope = (stage.target - self.from) / d;
                let t = if slope.abs() < 1e-12 {
                    need / self.from
                } else {
                    (-self.from + (self.from * self.from + 2.0 * slope * need).max(0.0).sqrt())
                        / slope
                };
                self.next += 1.0;
                return Some(Duration::from_secs_f64(self.stage_start + t.clamp(0.0, d)));
            }
            self.due_before += due;
            self.stage_start += d;
            self.from = stage.target;
            self.stage += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rate_sends_evenly() {
        let times: Vec<Duration> = Schedule::constant(100.0, Duration::from_secs(2))
            .send_times()
            .collect();
        assert_eq!(times.len(), 200);
        assert!((times[0].as_secs_f64() - 0.01).abs() < 1e-9);
        assert!((times[199].as_secs_f64() - 2.0).abs() < 1e-9);
        let gaps: Vec<f64> = times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        assert!(gaps.iter().all(|g| (g - 0.01).abs() < 1e-6));
    }

    #[test]
    fn ramps_send_the_area_under_the_rate_curve() {
        let schedule = Schedule::parse_stages("10s:100,10s:100,10s:0").unwrap();
        let times: Vec<Duration> = schedule.send_times().collect();
        // 500 while ramping up, 1000 at full rate, 500 ramping down.
        assert_eq!(times.len(), 2000);
        let in_first = times.iter().filter(|t| t.as_secs_f64() <= 10.0).count();
        assert_eq!(in_first, 500);
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "in order");
        assert_eq!(schedule.rate_at(Duration::from_secs(5)), 50.0);
        assert_eq!(schedule.rate_at(Duration::from_secs(15)), 100.0);
        assert_eq!(schedule.rate_at(Duration::from_secs(25)), 50.0);
        assert_eq!(schedule.duration(), Duration::from_secs(30));
    }

    #[test]
    fn bad_stages_say_what_to_fix() {
        assert!(Schedule::parse_stages("30s")
            .unwrap_err()
            .contains("DURATION:RATE"));
        assert!(Schedule::parse_stages("30s:fast")
            .unwrap_err()
            .contains("not a number"));
        assert!(Schedule::parse_stages("thirty:5")
            .unwrap_err()
            .contains("examples"));
        assert!(Schedule::parse_stages("0s:5")
            .unwrap_err()
            .contains("longer than 0"));
        assert!(Schedule::parse_stages("1s:-4")
            .unwrap_err()
            .contains("0 or more"));
    }
}
