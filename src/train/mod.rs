//! Training: the step (forward, one backward pass into two gradient buffers, exchange, φ
//! combination, clipping, Adam: `step`), the host-side gradient buffers and their exchange
//! (`grads`), the optimizer (`optim`) and its learning rates (`schedule`), the replica and exact
//! evaluation (`trainer`), the run's loop (`run`), a saved model scored (`saved`: `eval`,
//! `predict`), stopping on request (`interrupt`), and libtorch's deterministic algorithms
//! (`deterministic`).
pub mod deterministic;
pub mod grads;
pub mod interrupt;
pub mod optim;
pub mod run;
pub mod saved;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use self::interrupt::Interrupter;
pub use self::run::{check_dataset_there, check_run_dir_path, dataset_refusal, train, train_from, train_until, Resume};
pub use self::trainer::{evaluate, EvalResult, Summary, TrainError};
