//! Which runtime answers for an agent: one place that knows every runtime, so the runtime
//! boundary (`runtime.rs`) knows none of them.

use std::sync::Arc;

use super::{
    openai::OpenAi,
    runtime::{Echo, Misconfigured, Runtime},
    webhook::Webhook,
};
use crate::model::RuntimeSpec;

/// The runtime for `spec`, sharing one HTTP client (connection pool) across runs.
pub fn runtime_for(spec: &RuntimeSpec, http: &reqwest::Client) -> Arc<dyn Runtime> {
    match spec {
        RuntimeSpec::Echo => Arc::new(Echo),
        RuntimeSpec::OpenAi(config) => Arc::new(OpenAi::new(config.clone(), http.clone())),
        RuntimeSpec::Webhook(config) => Arc::new(Webhook::new(config.clone(), http.clone())),
        RuntimeSpec::Misconfigured(why) => Arc::new(Misconfigured(why.clone())),
    }
}
