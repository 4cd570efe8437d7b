//! One way to stop the server, whoever asks: a signal, or the loss of the standalone
//! lease (then the server exits with an error that says why).

use std::sync::Mutex;

use tokio::sync::watch;

#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
    /// Why the server stopped, when it was not asked to.
    failure: Mutex<Option<String>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: watch::channel(false).0,
            failure: Mutex::new(None),
        }
    }
}

impl Shutdown {
    /// A clean stop (SIGTERM, SIGINT).
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }

    /// A stop the server did not choose: `kss serve` then exits with this error.
    pub fn fail(&self, why: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert(why);
        drop(failure);
        self.stop();
    }

    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolves once a stop was asked for.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            // Err: the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}
