//! Sockets: a port nothing listens on (and nobody can take), whether a
//! listener is closed, what a server has read, and slow clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::http::{parse, Resp};
use crate::wait::wait_until;

/// A loopback TCP port that is bound but not listening, for as long as this
/// value lives: connecting to it is refused, and no other socket can take
/// it meanwhile (unlike a port that "was free a moment ago").
#[derive(Debug)]
pub struct ClosedPort {
    _socket: Socket,
    addr: SocketAddr,
}

impl ClosedPort {
    /// Binds 127.0.0.1:0 without listening.
    pub fn new() -> ClosedPort {
        Self::bind(false)
    }

    /// Binds with `SO_REUSEADDR`, so that a server that sets it too (as
    /// `redis-server` does) can listen on the port; nobody else takes it.
    pub fn reusable() -> ClosedPort {
        Self::bind(true)
    }

    fn bind(reuse: bool) -> ClosedPort {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.set_reuse_address(reuse).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        ClosedPort {
            _socket: socket,
            addr,
        }
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a new connection to `addr` is refused (the listener is closed).
pub fn refused(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
}

/// Bytes the server side of the IPv4 connection `server` ⇄ `client` has
/// received but its process has not read yet (from `/proc/net/tcp`);
/// `None` if there is no such connection.
pub fn unread_by_server(server: SocketAddr, client: SocketAddr) -> Option<u32> {
    fn parse_addr(field: &str) -> Option<SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?.to_le_bytes();
        Some(SocketAddr::from((ip, u16::from_str_radix(port, 16).ok()?)))
    }
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if parse_addr(f.get(1)?)? != server || parse_addr(f.get(2)?)? != client {
            return None;
        }
        let (_, rx) = f.get(4)?.split_once(':')?;
        u32::from_str_radix(rx, 16).ok()
    })
}

/// Writes `bytes` one at a time and waits until the server has read them
/// all: the request is then provably under way on the server side.
pub fn send_and_wait_read(s: &mut TcpStream, bytes: &[u8]) {
    for b in bytes {
        s.write_all(&[*b]).unwrap();
    }
    let (server, client) = (s.peer_addr().unwrap(), s.local_addr().unwrap());
    wait_until(Duration::from_secs(10), "the server read the bytes", || {
        unread_by_server(server, client) == Some(0)
    });
}

/// Sends `rest` of a request a byte every 2 ms (a slow client), then reads
/// the whole answer until the server closes the connection.
pub fn finish_slowly(s: &mut TcpStream, rest: &[u8]) -> Resp {
    for b in rest {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_refuses_and_cannot_be_taken() {
        let p = ClosedPort::new();
        assert!(refused(p.addr()));
        assert!(std::net::TcpListener::bind(p.addr()).is_err());
    }
}

/// A loopback listener that never accepts and whose accept queue is full,
/// so a new connection to it hangs (its SYN is dropped) instead of being
/// refused: a blackholed pod, without an address outside loopback.
#[derive(Debug)]
pub struct Blackhole {
    _listener: Socket,
    _queued: Vec<TcpStream>,
    addr: SocketAddr,
}

impl Blackhole {
    /// Listens on 127.0.0.1:0 with the smallest backlog and fills it.
    pub fn new() -> Blackhole {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        // Connect until one no longer completes: the queue is then full.
        let mut queued = Vec::new();
        for _ in 0..16 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => queued.push(s),
                Err(_) => break,
            }
        }
        Blackhole {
            _listener: listener,
            _queued: queued,
            addr,
        }
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Default for Blackhole {
    fn default() -> Self {
        Self::new()
    }
}
