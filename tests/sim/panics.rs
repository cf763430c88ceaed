//! Panics raised on the simulation's thread (node code runs there: tokio tasks that panic
//! are swallowed by the runtime, so a hook is the only way to see them).

use std::cell::RefCell;
use std::sync::Once;

thread_local! {
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

static HOOK: Once = Once::new();

/// Installs the hook (once per process) and clears this thread's record.
pub fn reset() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = turmoil::sim_elapsed()
                .map(|d| format!(" at {d:?} simulated"))
                .unwrap_or_default();
            PANICS.with(|p| p.borrow_mut().push(format!("{info}{at}")));
            previous(info);
        }));
    });
    PANICS.with(|p| p.borrow_mut().clear());
}

/// The panics recorded on this thread since [`reset`].
pub fn take() -> Vec<String> {
    PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()))
}
