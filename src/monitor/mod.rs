//! Response monitors. Today: Gemini's stream monitor, which notices when
//! a streamed answer was cut off and transparently continues it.

pub mod gemini;
pub mod prompts;
pub mod sse;
pub(crate) mod stream;
