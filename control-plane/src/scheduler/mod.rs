//! The scheduler: kube-scheduler's default filters and scores over an informer-fed view
//! of nodes and pods. [`framework::Profile`] makes one decision; the filters live in
//! `filters/`, the scores in `scores/`, a node's view in [`node_info`].

pub mod filters;
pub mod framework;
pub mod labels;
pub mod metrics;
pub mod node_info;
pub mod preemption;
pub mod quantity;
pub mod run;
pub mod scores;
pub mod volumes;

#[cfg(test)]
mod tests;
