//! Which runtime answers for an agent: one place that knows every runtime, so the runtime
//! boundary (`runtime.rs`) knows none of them.

use std::sync::Arc;

use super::{
    nats::{Broker, NatsRuntime},
    openai::OpenAi,
    runtime::{Echo, Misconfigured, Runtime},
    webhook::Webhook,
};
use crate::model::RuntimeSpec;

/// The runtime for `spec`, sharing one HTTP client (connection pool) across runs, and the
/// `nats` runtime's broker (none: `[events]` has no `nats_url`).
pub fn runtime_for(
    spec: &RuntimeSpec,
    http: &reqwest::Client,
    broker: Option<&Arc<Broker>>,
) -> Arc<dyn Runtime> {
    match spec {
        RuntimeSpec::Echo => Arc::new(Echo),
        RuntimeSpec::OpenAi(config) => Arc::new(OpenAi::new(config.clone(), http.clone())),
        RuntimeSpec::Webhook(config) => Arc::new(Webhook::new(config.clone(), http.clone())),
        RuntimeSpec::Nats(config) => match broker {
            Some(broker) => Arc::new(NatsRuntime::new(config.clone(), broker.clone())),
            None => Arc::new(Misconfigured(
                "runtime nats needs a NATS server: set [events] nats_url".into(),
            )),
        },
        RuntimeSpec::Misconfigured(why) => Arc::new(Misconfigured(why.clone())),
    }
}
