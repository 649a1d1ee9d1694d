//! Webhooks, one concept a file:
//!
//! | where | what |
//! |---|---|
//! | [`subscriptions`] | the subscription service: create, change, rotate, approve |
//! | [`secrets`] | a subscription's sealed signing-secret set |
//! | [`endpoints`] | a subscription's delivery options: headers, mutual TLS, CA, timeout |
//! | [`policy`] | the operator's URL, host and size rules |
//! | [`event_types`] | the event-type and pattern grammar |
//! | [`channels`] | channels: which subscriptions an event's channels reach |
//! | [`outbox`] | writing an event and its deliveries in one transaction |
//! | [`events`] | PublishEvent |
//! | [`catalog`] | the event catalog: types, schemas, examples; payloads checked at publication |
//! | [`publisher`] | group commit: concurrent publications written a batch per transaction |
//! | [`deliveries`] | reading, retrying and test-sending deliveries |
//! | [`portal`] | one-time links to the webhook portal for an org |
//! | [`dispatch`] | sending: the loop, retries, throttling, the request, endpoint health |

pub mod catalog;
pub mod channels;
pub mod deliveries;
pub mod dispatch;
pub mod endpoints;
pub mod event_types;
pub mod events;
pub mod outbox;
pub mod policy;
pub mod portal;
pub mod publisher;
pub mod secrets;
pub mod subscriptions;
pub mod system_events;

pub use catalog::EventCatalog;
pub use deliveries::DeliveryService;
pub use dispatch::{DispatchSettings, Dispatcher};
pub use events::EventService;
pub use policy::WebhookPolicy;
pub use portal::PortalLinks;
pub use subscriptions::WebhookService;
