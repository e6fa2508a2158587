//! Stages as Kubernetes Jobs (`executor: { kubernetes: {...} }`).
//!
//! The host still plans, journals and decides; only a stage's run moves into
//! a pod. [`job`] is the host side: per stage attempt a Secret (the stage's
//! spec and only its granted secrets) and a batch/v1 Job (`backoffLimit: 0`,
//! `activeDeadlineSeconds` = the stage timeout, `ttlSecondsAfterFinished`,
//! no service-account token unless `cluster` is granted), followed by watch
//! until `Complete`/`Failed`, its pod's log streamed into the stage log, the
//! result read from the container's termination message. [`worker`] is the
//! pod side, `gantry stage --spec FILE`: one stage, run in-process by the same
//! runtime and grants as the local executor. [`spec`] is what passes between
//! them.

pub mod config;
pub mod job;
pub mod spec;
pub mod worker;
