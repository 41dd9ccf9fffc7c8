//! Stripe webhook ingestion. Pure parts: header verification (`signature`, mirrored on
//! Stripe's SDKs), payload facts (`event`) and the mapping and ordering rules (`decide`).
//! Postgres parts: the tables (`store`, SPI) and the SQL functions (`ingest`).

pub mod decide;
pub mod event;
mod ingest;
pub mod signature;
mod store;

#[cfg(test)]
mod fixture_tests;
