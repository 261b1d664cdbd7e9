//! Measurement and the report maths: delivery accounting, latency histograms, failure causes,
//! rate limiting and `/proc` readings.

pub mod accounting;
pub mod failure;
pub mod hist;
pub mod pacer;
pub mod recovery;
pub mod sysstats;
