//! The classic transport: threads each read a request from `/dev/fuse` and
//! write the reply back, the way fuser (and so unionfuse) serves today.

use crate::proto::{self, InHeader, Outcome};
use std::os::fd::RawFd;

/// Room for the largest request (a WRITE of MAX_WRITE) and its headers.
pub const BUF_LEN: usize = proto::MAX_WRITE as usize + 4096;

pub fn read_frame(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: buf is a live, writable slice of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // ENOENT: the request was interrupted before we read it.
            Some(libc::EINTR) | Some(libc::ENOENT) | Some(libc::EAGAIN) => continue,
            _ => return Err(e),
        }
    }
}

pub fn write_frame(fd: RawFd, frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: frame is a live slice of frame.len() bytes.
    let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        // The kernel forgot the request (interrupted, or the caller died).
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Serves requests until the connection goes away (unmount).
pub fn serve(fd: RawFd) {
    let mut inb = vec![0u8; BUF_LEN];
    let mut out = vec![0u8; BUF_LEN];
    loop {
        let n = match read_frame(fd, &mut inb) {
            Ok(n) => n,
            // ENODEV: unmounted.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return,
            Err(e) => {
                eprintln!("uring-probe: reading /dev/fuse: {e}");
                return;
            }
        };
        let frame = &inb[..n];
        let Some(h) = InHeader::parse(frame) else {
            eprintln!("uring-probe: short request of {n} bytes");
            return;
        };
        if h.len as usize != n {
            eprintln!("uring-probe: request says {} bytes, read {n}", h.len);
            return;
        }
        let rest = &frame[proto::IN_HEADER_LEN..];
        let split = proto::op_struct_len(h.opcode).min(rest.len());
        let (op_in, payload) = rest.split_at(split);
        let (len, error) =
            match proto::handle(&h, op_in, payload, &mut out[proto::OUT_HEADER_LEN..]) {
                Outcome::NoReply => continue,
                Outcome::Body(b) => (proto::OUT_HEADER_LEN + b, 0),
                Outcome::Error(e) => (proto::OUT_HEADER_LEN, e),
            };
        proto::out_header(&mut out, len, error, h.unique);
        if let Err(e) = write_frame(fd, &out[..len]) {
            if e.raw_os_error() != Some(libc::ENODEV) {
                eprintln!("uring-probe: replying on /dev/fuse: {e}");
            }
            return;
        }
    }
}
