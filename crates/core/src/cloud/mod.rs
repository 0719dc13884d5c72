//! The cloud protocol's config ([`settings`]) and metrics ([`metrics`]). Its rooms are
//! [`crate::hub`] and [`crate::room`]; the socket is the server's.

pub mod metrics;
pub mod settings;

pub use metrics::CloudMetrics;
pub use settings::{CloudLimits, CloudSettings};
