//! Response monitors: streams that are never cut off (SPEC §5, §14). A
//! monitor notices when a streamed answer was cut off and transparently
//! continues it — Gemini's, OpenAI chat completions', Anthropic messages'.

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod prompts;
pub(crate) mod seam;
pub mod sse;
pub(crate) mod stream;
