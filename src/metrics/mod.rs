//! Evaluation metrics for click-through-rate models, as pure functions over slices.
//!
//! Nothing here touches libtorch or knows about ranks: callers gather scores, labels and user ids
//! into plain slices (on one rank, or after an all-gather) and call these functions. Every
//! function is deterministic and, where the metric allows, independent of the order of its
//! input.
//!
//! - [`auc()`]: exact ROC AUC (the Mann–Whitney statistic, ties counted one half).
//! - [`gauc()`]: group AUC as in the DIN paper, per-user AUC weighted by impressions.
//! - [`log_loss`] and [`log_loss_from_logits`]: mean binary cross-entropy.

mod auc;
mod gauc;
mod logloss;

pub use self::auc::auc;
pub use self::gauc::gauc;
pub use self::logloss::{log_loss, log_loss_from_logits};
