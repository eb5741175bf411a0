//! Batching in front of the non-blocking log writer.
//!
//! tracing-appender's `NonBlocking` writer hands every line to its writer
//! thread through a channel: one allocation, one send and, when that thread
//! sleeps, one wake-up per line. At tens of thousands of access-log lines a
//! second the wake-ups cost more than the formatting. [`Batched`] puts a per-thread buffer in front:
//! a worker thread that called [`batch_this_thread`] appends its lines to a
//! thread-local buffer that goes to the inner writer in one piece when it
//! passes [`CHUNK`] bytes, when the worker calls [`flush_this_thread`] (its
//! runtime does every [`FLUSH_EVERY`]), and when the thread ends. Every other
//! thread writes straight through. Nothing here blocks: the inner writer is
//! still the non-blocking one, and drops when its queue is full.

use std::cell::RefCell;
use std::io::{self, Write};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// A worker's buffer goes to the inner writer when it reaches this size.
pub const CHUNK: usize = 16 * 1024;
/// How often a worker runtime flushes its buffer (so lines appear promptly).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A [`MakeWriter`] that batches lines per worker thread before handing them
/// to `W` (normally `tracing_appender::non_blocking::NonBlocking`).
#[derive(Clone)]
pub struct Batched<W> {
    inner: W,
}

impl<W> Batched<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Batched { inner }
    }
}

struct Local {
    batching: bool,
    buf: Vec<u8>,
    /// This thread's own handle on the inner writer.
    sink: Option<Box<dyn Write>>,
}

impl Local {
    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Some(sink) = &mut self.sink {
            // The non-blocking writer never blocks; a line it cannot queue is lost.
            let _ = sink.write_all(&self.buf);
        }
        self.buf.clear();
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.flush();
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local { batching: false, buf: Vec::new(), sink: None })
    };
}

/// Makes this thread's log lines go through its own buffer (a worker thread
/// with the access log on calls it at start).
pub fn batch_this_thread() {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.batching = true;
        l.buf.reserve(CHUNK + 1024);
    });
}

/// Hands this thread's buffered lines to the inner writer now.
pub fn flush_this_thread() {
    let _ = LOCAL.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            l.flush();
        }
    });
}

/// The writer of one event.
pub struct BatchedWriter<'a, W> {
    make: &'a Batched<W>,
}

impl<'a, W> MakeWriter<'a> for Batched<W>
where
    W: Write + Clone + 'static,
{
    type Writer = BatchedWriter<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        BatchedWriter { make: self }
    }
}

impl<W> Write for BatchedWriter<'_, W>
where
    W: Write + Clone + 'static,
{
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let direct = LOCAL
            .try_with(|l| {
                let Ok(mut l) = l.try_borrow_mut() else {
                    return true;
                };
                if !l.batching {
                    return true;
                }
                if l.sink.is_none() {
                    l.sink = Some(Box::new(self.make.inner.clone()));
                }
                l.buf.extend_from_slice(data);
                if l.buf.len() >= CHUNK {
                    l.flush();
                }
                false
            })
            .unwrap_or(true);
        if direct {
            self.make.inner.clone().write_all(data)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(data.to_vec());
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn batching_threads_hand_over_in_chunks_others_write_through() {
        let sink = Sink::default();
        let make = Batched::new(sink.clone());
        make.make_writer().write_all(b"direct\n").unwrap();
        assert_eq!(sink.0.lock().unwrap().len(), 1);

        let make2 = make.clone();
        std::thread::spawn(move || {
            batch_this_thread();
            let line = [b'x'; 99];
            for _ in 0..200 {
                make2.make_writer().write_all(&line).unwrap();
                make2.make_writer().write_all(b"\n").unwrap();
            }
        })
        .join()
        .unwrap();
        let got = sink.0.lock().unwrap();
        // The direct line, one full chunk, and the rest flushed at thread exit.
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].len() + got[2].len(), 20_000);
        assert!(got[1].len() >= CHUNK);
    }

    #[test]
    fn flush_this_thread_hands_over_now() {
        let sink = Sink::default();
        let make = Batched::new(sink.clone());
        let s = sink.clone();
        std::thread::spawn(move || {
            batch_this_thread();
            make.make_writer().write_all(b"one\n").unwrap();
            assert!(s.0.lock().unwrap().is_empty());
            flush_this_thread();
            assert_eq!(s.0.lock().unwrap().concat(), b"one\n");
        })
        .join()
        .unwrap();
    }
}
