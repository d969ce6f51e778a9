//! Training: the step (forward, one backward pass into two gradient buffers, exchange, φ
//! combination, Adam), the host-side gradient buffers and their exchange, the optimizer, and the
//! loop with evaluation.
pub mod grads;
pub mod interrupt;
pub mod optim;
pub mod run;
pub mod saved;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use self::interrupt::Interrupter;
pub use self::run::{train, train_from, train_until, Resume};
pub use self::trainer::{evaluate, EvalResult, Summary, TrainError};
