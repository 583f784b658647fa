//! Translation (being written).
