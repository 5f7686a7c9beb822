//! What a client of the daemon's socket may send, checked as the bytes arrive, before zbus
//! buffers any of it: a short handshake without descriptors, then messages of at most
//! [`MAX_MESSAGE`] bytes (each with at most [`MAX_FDS`] descriptors, which the transport
//! receives with room for no more).
//!
//! zbus takes any message up to D-Bus's maximum, 128 MiB, and holds it (and its descriptors)
//! while the call runs: eight calls with a 30 MiB environment took the daemon from 17 to 263 MB
//! resident. A message's size is in its first 16 bytes, so one too large is refused there,
//! before zbus makes room for it, and the client is dropped.

/// The largest message a socket client may send. The largest legitimate call is an `Enter`,
/// whose argument list and environment the kernel will not `exec` beyond about 2 MiB
/// (`ARG_MAX` with the default 8 MiB stack); D-Bus's encoding adds a little to that.
pub(crate) const MAX_MESSAGE: u64 = 4 * 1024 * 1024;

/// The most descriptors one message of a client may carry: an `Enter` passes three (stdin,
/// stdout, stderr), no other call any. (D-Bus allows 253; three calls carrying 250 each, replies
/// unread, once pinned 751 of the daemon's 1024.)
pub(crate) const MAX_FDS: usize = 8;

/// The most a client may send before its handshake ends: `EXTERNAL` takes three short lines.
pub(crate) const MAX_HANDSHAKE: usize = 16 * 1024;

/// Why a client was dropped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("its handshake went on for more than {MAX_HANDSHAKE} bytes")]
    LongHandshake,
    #[error("it sent descriptors before its handshake ended")]
    EarlyDescriptors,
    #[error("it sent a message of {size} bytes, more than the daemon takes ({MAX_MESSAGE})")]
    TooLarge { size: u64 },
    #[error("it sent a message in an unknown byte order ({0:#04x})")]
    ByteOrder(u8),
}

/// Where in its stream a client is.
#[derive(Debug)]
pub(crate) enum Framing {
    /// The handshake: `seen` bytes so far, and the start of the current line (enough to tell
    /// `BEGIN`, which ends it, from any other).
    Handshake { seen: usize, line: Vec<u8> },
    /// A message's fixed header, `have` of its 16 bytes.
    Header { bytes: [u8; 16], have: usize },
    /// What is left of the current message after its header.
    Rest(u64),
}

impl Default for Framing {
    fn default() -> Framing {
        Framing::Handshake {
            seen: 0,
            line: Vec::new(),
        }
    }
}

const HEADER: usize = 16;

impl Framing {
    /// Follows the client through `bytes`, received with `fds` descriptors.
    pub(crate) fn take(&mut self, mut bytes: &[u8], fds: usize) -> Result<(), Refused> {
        while let Some((&byte, rest)) = bytes.split_first() {
            match self {
                Framing::Handshake { seen, line } => {
                    *seen += 1;
                    if *seen > MAX_HANDSHAKE {
                        return Err(Refused::LongHandshake);
                    }
                    bytes = rest;
                    if byte != b'\n' {
                        // No line that ends the handshake is longer than `BEGIN\r`.
                        if line.len() < 8 {
                            line.push(byte);
                        }
                    } else if line.as_slice() == b"BEGIN\r" {
                        *self = Framing::header();
                    } else {
                        line.clear();
                    }
                }
                Framing::Header { bytes: header, have } => {
                    let n = (HEADER - *have).min(bytes.len());
                    header[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == HEADER {
                        let size = message_size(header)?;
                        if size > MAX_MESSAGE {
                            return Err(Refused::TooLarge { size });
                        }
                        *self = match size - HEADER as u64 {
                            0 => Framing::header(),
                            rest => Framing::Rest(rest),
                        };
                    }
                }
                Framing::Rest(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        *self = Framing::header();
                    }
                }
            }
        }
        // Descriptors come with the first byte of what carries them: still in the handshake
        // after all of it, they came with the handshake.
        if fds > 0 && matches!(self, Framing::Handshake { .. }) {
            return Err(Refused::EarlyDescriptors);
        }
        Ok(())
    }

    fn header() -> Framing {
        Framing::Header {
            bytes: [0; HEADER],
            have: 0,
        }
    }
}

/// A message's whole size from its fixed header: the header, its fields (padded to 8 bytes),
/// the body.
fn message_size(header: &[u8; HEADER]) -> Result<u64, Refused> {
    let word = |at: usize| -> Result<u64, Refused> {
        let bytes: [u8; 4] = header[at..at + 4].try_into().expect("4 bytes");
        Ok(u64::from(match header[0] {
            b'l' => u32::from_le_bytes(bytes),
            b'B' => u32::from_be_bytes(bytes),
            other => return Err(Refused::ByteOrder(other)),
        }))
    };
    let (body, fields) = (word(4)?, word(12)?);
    let with_fields = HEADER as u64 + fields;
    Ok(with_fields.next_multiple_of(8) + body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDSHAKE: &[u8] = b"\0AUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n";

    /// A little-endian method call's header with `fields` bytes of fields and `body` of body.
    fn header(fields: u32, body: u32) -> Vec<u8> {
        let mut h = vec![b'l', 1, 0, 1];
        h.extend(body.to_le_bytes());
        h.extend(1u32.to_le_bytes());
        h.extend(fields.to_le_bytes());
        h
    }

    /// A whole message: header, fields padded to 8, body.
    fn message(fields: u32, body: u32) -> Vec<u8> {
        let mut m = header(fields, body);
        m.resize((16 + fields as usize).next_multiple_of(8) + body as usize, 0);
        m
    }

    #[test]
    fn a_client_within_the_limits_passes_however_its_bytes_are_cut() {
        let mut stream = HANDSHAKE.to_vec();
        stream.extend(message(100, 1000));
        stream.extend(message(0, 0));
        stream.extend(message(3, (MAX_MESSAGE - 24) as u32));
        stream.extend(message(61, 7));
        for cut in [1, 3, 16, 17, 4096, stream.len()] {
            let mut framing = Framing::default();
            for chunk in stream.chunks(cut) {
                framing.take(chunk, 0).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            }
            assert!(
                matches!(framing, Framing::Header { have: 0, .. }),
                "cut at {cut}: {framing:?}"
            );
        }
    }

    #[test]
    fn a_message_too_large_is_refused_at_its_header() {
        let mut framing = Framing::default();
        framing.take(HANDSHAKE, 0).unwrap();
        framing.take(&message(8, 8), 0).unwrap();
        // Claims 128 MiB: refused once the 16 header bytes are in, before any of the body.
        assert_eq!(
            framing.take(&header(0, 128 << 20), 0),
            Err(Refused::TooLarge { size: 16 + (128 << 20) })
        );
        // Over only by its fields' padding.
        let mut framing = Framing::default();
        framing.take(HANDSHAKE, 0).unwrap();
        let body = (MAX_MESSAGE - 24) as u32;
        assert_eq!(
            framing.take(&header(9, body), 0),
            Err(Refused::TooLarge { size: MAX_MESSAGE + 8 })
        );
        // In big-endian too; and an unknown byte order is no message.
        let mut framing = Framing::default();
        framing.take(HANDSHAKE, 0).unwrap();
        let mut big = vec![b'B', 1, 0, 1];
        big.extend((64u32 << 20).to_be_bytes());
        big.extend([0; 8]);
        assert_eq!(framing.take(&big, 0), Err(Refused::TooLarge { size: 16 + (64 << 20) }));
        let mut framing = Framing::default();
        framing.take(HANDSHAKE, 0).unwrap();
        assert_eq!(framing.take(&[b'x'; 16], 0), Err(Refused::ByteOrder(b'x')));
    }

    #[test]
    fn the_handshake_is_short_and_carries_no_descriptors() {
        let mut framing = Framing::default();
        assert_eq!(
            framing.take(&vec![b'A'; MAX_HANDSHAKE + 1], 0),
            Err(Refused::LongHandshake)
        );
        // Many lines, none of them BEGIN, count together.
        let mut framing = Framing::default();
        let lines = b"DATA\r\n".repeat(MAX_HANDSHAKE / 6 + 1);
        assert_eq!(framing.take(&lines, 0), Err(Refused::LongHandshake));
        // A line that only starts like BEGIN does not end the handshake.
        let mut framing = Framing::default();
        framing.take(b"\0AUTH EXTERNAL 30\r\nBEGINNING\r\n", 0).unwrap();
        assert!(matches!(framing, Framing::Handshake { .. }));
        assert_eq!(framing.take(b"AUTH", 1), Err(Refused::EarlyDescriptors));
        // Descriptors with the first message, sent together with BEGIN, are the message's.
        let mut framing = Framing::default();
        let mut both = HANDSHAKE.to_vec();
        both.extend(message(0, 8));
        framing.take(&both, 2).unwrap();
    }
}
