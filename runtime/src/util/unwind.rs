//! Catching the panics of user code (handlers, hooks, callbacks) so they
//! never unwind into one of portpool's threads.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// A suspend or resume hook.
pub(crate) type Hook = Arc<dyn Fn() + Send + Sync>;

/// Runs `f`, turning a panic into its message.
pub(crate) fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_message(&*payload))
}

/// Calls a user's callback (a hook, an event handler); a panic in it is
/// logged, naming `what`, instead of unwinding into the pool's thread.
pub(crate) fn call_logged(what: &str, f: impl FnOnce()) {
    if let Err(m) = catch_panic(f) {
        log::error!("a {what} panicked: {m}");
    }
}

/// Runs `hooks` in order; a panicking one is logged and the rest still run.
pub(crate) fn run_hooks(hooks: &[Hook], what: &str) {
    for h in hooks {
        call_logged(&format!("{what} hook"), || h());
    }
}

/// The message of a panic payload (`&str` or `String`), or a placeholder.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
