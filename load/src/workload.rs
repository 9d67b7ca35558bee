//! What each request buys: many distinct users with a skewed (Zipf) popularity, as real
//! shops see a few heavy buyers and a long tail, and prices spread like a catalogue's.

use rand::Rng;
use rand_distr::{Distribution, LogNormal, Zipf};
use serde_json::{json, Value};

pub struct Workload {
    users: Zipf<f64>,
    prices: LogNormal<f64>,
}

impl Workload {
    /// `users` distinct users, the k-th most active with weight 1/k^`exponent`.
    pub fn new(users: u64, exponent: f64) -> Result<Self, String> {
        let users = Zipf::new(users.max(1) as f64, exponent)
            .map_err(|e| format!("invalid user distribution (--users, --zipf-exponent): {e}"))?;
        // Median about 25.00, most between 5 and 150.
        let prices = LogNormal::new(25f64.ln(), 0.9).expect("valid log-normal");
        Ok(Self { users, prices })
    }

    pub fn purchase<R: Rng>(&self, rng: &mut R) -> Value {
        let user = self.users.sample(rng) as u64;
        let cents = (self.prices.sample(rng) * 100.0)
            .round()
            .clamp(50.0, 500_000.0) as i64;
        json!({
            "username": format!("shopper {user}"),
            "userId": format!("user-{user}"),
            "price": cents as f64 / 100.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::SeedableRng;

    use super::*;

    #[test]
    fn purchases_are_valid_and_users_are_skewed() {
        let workload = Workload::new(1000, 1.1).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut per_user: HashMap<String, usize> = HashMap::new();
        for _ in 0..10_000 {
            let body = workload.purchase(&mut rng);
            let text = serde_json::value::to_raw_value(&body).unwrap();
            purchase::NewPurchase::from_json(&text, purchase::validation::UserIdField::Current)
                .expect("the gateway accepts every generated purchase");
            *per_user
                .entry(body["userId"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        let top = per_user["user-1"];
        assert!(top > 1000, "the most active user buys a lot ({top})");
        assert!(
            per_user.len() > 300,
            "and there is a long tail ({} users)",
            per_user.len()
        );
    }
}
