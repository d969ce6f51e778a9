//! The learning rate of each step: a linear warm-up over `train.warmup_steps`, then constant,
//! step decay or a half cosine down to `train.lr_min` (`train.lr_schedule`). A function of the
//! global step alone, so every rank, and a resumed run, takes the same rate at the same step.
use crate::config::{LrSchedule, TrainConfig};

/// The learning rates of a run of `total_steps` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    base: f64,
    warmup: u64,
    kind: LrSchedule,
    step_every: u64,
    gamma: f64,
    min: f64,
    total: u64,
}

impl Schedule {
    pub fn new(train: &TrainConfig, total_steps: u64) -> Self {
        Self {
            base: train.lr,
            warmup: train.warmup_steps,
            kind: train.lr_schedule,
            step_every: train.lr_step_every.max(1),
            gamma: train.lr_step_gamma,
            min: train.lr_min,
            total: total_steps,
        }
    }

    /// The learning rate of global step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        let taken = step + 1;
        if taken <= self.warmup {
            return self.base * taken as f64 / self.warmup as f64;
        }
        let after = taken - self.warmup - 1;
        match self.kind {
            LrSchedule::Constant => self.base,
            LrSchedule::Step => self.base * self.gamma.powi((after / self.step_every).min(i32::MAX as u64) as i32),
            LrSchedule::Cosine => {
                // From the first step after the warm-up (the full rate) to the last (`min`).
                let span = self.total.saturating_sub(self.warmup + 1).max(1);
                let progress = after.min(span) as f64 / span as f64;
                self.min + (self.base - self.min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: LrSchedule, warmup: u64, total: u64) -> Schedule {
        let train = TrainConfig {
            lr: 0.01,
            lr_schedule: kind,
            warmup_steps: warmup,
            lr_step_every: 3,
            lr_step_gamma: 0.5,
            lr_min: 0.001,
            ..TrainConfig::default()
        };
        Schedule::new(&train, total)
    }

    #[test]
    fn warm_up_then_each_schedule_gives_its_hand_computed_rates() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        // Warm-up of 4 steps: 0.01·1/4, ·2/4, ·3/4, then the full rate.
        let constant = schedule(LrSchedule::Constant, 4, 100);
        let rates: Vec<f64> = (0..6).map(|s| constant.lr(s)).collect();
        assert!(rates.iter().zip([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01]).all(|(&a, b)| close(a, b)), "{rates:?}");
        // Step decay by half every 3 steps after a warm-up of 2.
        let step = schedule(LrSchedule::Step, 2, 100);
        let rates: Vec<f64> = (2..11).map(|s| step.lr(s)).collect();
        let want = [0.01, 0.01, 0.01, 0.005, 0.005, 0.005, 0.0025, 0.0025, 0.0025];
        assert!(rates.iter().zip(want).all(|(&a, b)| close(a, b)), "{rates:?}");
        // Cosine over 11 steps, no warm-up: full at step 0, lr_min at step 10 and after,
        // halfway between them at step 5 (cos(π/2) = 0).
        let cosine = schedule(LrSchedule::Cosine, 0, 11);
        assert!(close(cosine.lr(0), 0.01) && close(cosine.lr(10), 0.001) && close(cosine.lr(12), 0.001));
        assert!(close(cosine.lr(5), 0.0055), "{}", cosine.lr(5));
        assert!((1..11).all(|s| cosine.lr(s) < cosine.lr(s - 1)), "decreasing");
        // The default configuration is `train.lr` at every step, exactly.
        let plain = Schedule::new(&TrainConfig::default(), 50);
        assert!((0..60).all(|s| plain.lr(s) == TrainConfig::default().lr));
    }
}
