//! Runs code inside a named network namespace: a dedicated thread enters the
//! namespace with setns(2) (which affects only that thread) and runs the closure,
//! so a test can open real sockets in a pod's namespace without shelling out.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Runs `f` on a new thread inside the network namespace `/var/run/netns/<name>`.
pub fn in_netns<T, F>(name: &str, f: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = Path::new("/var/run/netns").join(name);
    let file = File::open(&path)?;
    let handle = std::thread::spawn(move || -> std::io::Result<T> {
        // SAFETY: setns on a valid, open namespace fd; it changes only this thread's
        // network namespace, and the thread ends when the closure returns.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| std::io::Error::other("thread inside the namespace panicked"))?
}
