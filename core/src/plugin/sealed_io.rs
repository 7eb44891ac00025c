//! WASI's `wasi:io/streams` and `wasi:io/poll` for plugins, in a form that
//! never waits. A plugin's call runs on the session thread's own stack
//! when it can (see `Instance::call_on_stage`), which needs every function
//! it may import to be synchronous; wasmtime-wasi's synchronous streams and
//! polls block on the Tokio runtime for their `blocking-*` functions and
//! their drops, and blocking on a runtime from a task running on it panics.
//! A plugin's WASI is sealed (no stdin, and stdout and stderr that swallow
//! what they are given: what a Rust plugin's panic message goes to), so
//! nothing it can reach ever has to wait: each of those functions here
//! polls wasmtime-wasi's own asynchronous version once, and an operation
//! that would still wait is a trap rather than a stalled session thread.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::io::{poll as async_poll, streams as async_streams};
use wasmtime_wasi::p2::bindings::sync::io::{poll as sync_poll, streams as sync_streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};

/// The plugin's resource table, as the WASI io host.
pub struct SealedIo<'a>(&'a mut ResourceTable);

struct HasSealedIo;

impl HasData for HasSealedIo {
    type Data<'a> = SealedIo<'a>;
}

/// Links the never-waiting streams and polls over the ones a
/// `wasmtime_wasi::p2::add_to_linker_sync` linked before.
pub fn link(linker: &mut Linker<super::PluginState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    sync_streams::add_to_linker::<_, HasSealedIo>(linker, |s| SealedIo(&mut s.table))?;
    sync_poll::add_to_linker::<_, HasSealedIo>(linker, |s| SealedIo(&mut s.table))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Polls `f` once: its output if it is ready without waiting.
fn now<F: Future>(f: F) -> Option<F::Output> {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fn would_wait(what: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!("{what} would wait, and nothing a plugin's WASI holds can make it ready"))
}

fn stream_now<T>(f: impl Future<Output = StreamResult<T>>, what: &str) -> StreamResult<T> {
    now(f).unwrap_or_else(|| Err(StreamError::Trap(would_wait(what))))
}

impl sync_streams::Host for SealedIo<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<sync_streams::StreamError> {
        sync_streams::Host::convert_stream_error(self.0, err)
    }
}

impl sync_streams::HostOutputStream for SealedIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        // A stream that would still be finishing (none a plugin can hold)
        // is dropped unfinished.
        now(async_streams::HostOutputStream::drop(self.0, stream)).unwrap_or(Ok(()))
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        sync_streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        sync_streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        stream_now(async_streams::HostOutputStream::blocking_write_and_flush(self.0, stream, bytes), "a blocking write")
    }

    fn blocking_write_zeroes_and_flush(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        stream_now(async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len), "a blocking write")
    }

    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        sync_streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        sync_streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        sync_streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        stream_now(async_streams::HostOutputStream::blocking_flush(self.0, stream), "a blocking flush")
    }

    fn splice(&mut self, dst: Resource<DynOutputStream>, src: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        sync_streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(&mut self, dst: Resource<DynOutputStream>, src: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        stream_now(async_streams::HostOutputStream::blocking_splice(self.0, dst, src, len), "a blocking splice")
    }
}

impl sync_streams::HostInputStream for SealedIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        now(async_streams::HostInputStream::drop(self.0, stream)).unwrap_or(Ok(()))
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        sync_streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        stream_now(async_streams::HostInputStream::blocking_read(self.0, stream, len), "a blocking read")
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        sync_streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        stream_now(async_streams::HostInputStream::blocking_skip(self.0, stream, len), "a blocking skip")
    }

    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        sync_streams::HostInputStream::subscribe(self.0, stream)
    }
}

impl sync_poll::Host for SealedIo<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        now(async_poll::Host::poll(self.0, pollables)).unwrap_or_else(|| Err(would_wait("a poll")))
    }
}

impl sync_poll::HostPollable for SealedIo<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        now(async_poll::HostPollable::ready(self.0, pollable)).unwrap_or_else(|| Err(would_wait("a readiness check")))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        now(async_poll::HostPollable::block(self.0, pollable)).unwrap_or_else(|| Err(would_wait("a block on a pollable")))
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        sync_poll::HostPollable::drop(self.0, pollable)
    }
}
