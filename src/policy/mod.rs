//! Privacy decisions on typed data, with no IO: which headers an upstream
//! request carries ([`headers`]) and which targets may be reached ([`target`]).

pub mod headers;
pub mod target;
