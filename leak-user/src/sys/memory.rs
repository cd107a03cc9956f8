//! Reading a process's memory from outside (process_vm_readv), behind a trait that tests
//! fill from a buffer.

/// Memory of the process (or of a test).
pub trait Memory {
    /// Fills `buffer` from `address`; how many bytes it could read (0 for an unreadable
    /// address).
    fn read(&mut self, address: u64, buffer: &mut [u8]) -> usize;

    /// Reads several ranges, each buffer from its address; how many bytes of each it could
    /// read. A process reads them in one system call rather than one each.
    fn read_each(&mut self, requests: &mut [(u64, &mut [u8])]) -> Vec<usize> {
        requests
            .iter_mut()
            .map(|(address, buffer)| self.read(*address, buffer))
            .collect()
    }

    /// The little-endian word at `address`, None where it cannot be read whole.
    fn read_u64(&mut self, address: u64) -> Option<u64> {
        let mut bytes = [0u8; 8];
        (self.read(address, &mut bytes) == 8).then(|| u64::from_le_bytes(bytes))
    }
}

/// Another process's memory, read with process_vm_readv.
pub struct ProcessMemory {
    pub pid: u32,
}

impl Memory for ProcessMemory {
    fn read(&mut self, address: u64, buffer: &mut [u8]) -> usize {
        let local = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        let remote = libc::iovec {
            iov_base: address as *mut libc::c_void,
            iov_len: buffer.len(),
        };
        // SAFETY: `local` describes our own buffer; the kernel checks the remote range.
        let read =
            unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        usize::try_from(read).unwrap_or(0)
    }

    /// One process_vm_readv per 1024 ranges (IOV_MAX). The kernel stops at the first range
    /// it cannot read whole and reads no part of it; that range is read alone, for what of
    /// it can be read, and the call goes on after it.
    fn read_each(&mut self, requests: &mut [(u64, &mut [u8])]) -> Vec<usize> {
        const IOV_MAX: usize = 1024;
        let count = requests.len();
        let mut got = vec![0; count];
        let mut from = 0;
        while from < count {
            let batch = &mut requests[from..(from + IOV_MAX).min(count)];
            let local: Vec<libc::iovec> = batch
                .iter_mut()
                .map(|(_, buffer)| libc::iovec {
                    iov_base: buffer.as_mut_ptr().cast(),
                    iov_len: buffer.len(),
                })
                .collect();
            let remote: Vec<libc::iovec> = batch
                .iter()
                .map(|(address, buffer)| libc::iovec {
                    iov_base: *address as *mut libc::c_void,
                    iov_len: buffer.len(),
                })
                .collect();
            // SAFETY: each local iovec describes one of our buffers, alive and not aliased
            // for the call; the kernel checks the remote ranges.
            let read = unsafe {
                libc::process_vm_readv(
                    self.pid as libc::pid_t,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            let mut left = usize::try_from(read).unwrap_or(0);
            let mut whole = 0;
            for (_, buffer) in batch.iter() {
                if left < buffer.len() {
                    break;
                }
                left -= buffer.len();
                got[from + whole] = buffer.len();
                whole += 1;
            }
            if whole < batch.len() {
                let (address, buffer) = &mut batch[whole];
                got[from + whole] = self.read(*address, buffer);
                whole += 1;
            }
            from += whole;
        }
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several ranges of this process read at once, with an unmapped one in the middle: the
    /// ranges around it are read whole, it reads as nothing.
    #[test]
    fn read_each_reads_around_an_unreadable_range() {
        let first = vec![7u8; 4096];
        let second: Vec<u8> = (0..=255).collect();
        let address = |bytes: &[u8]| bytes.as_ptr() as u64;
        let mut buffers = [vec![0u8; 4096], vec![0u8; 64], vec![0u8; 256]];
        let [a, b, c] = &mut buffers;
        let mut requests: Vec<(u64, &mut [u8])> = vec![
            (address(&first), a),
            // Page zero is never mapped.
            (8, b),
            (address(&second), c),
        ];
        let mut memory = ProcessMemory {
            pid: std::process::id(),
        };
        assert_eq!(memory.read_each(&mut requests), [4096, 0, 256]);
        assert_eq!(buffers[0], first);
        assert_eq!(buffers[2], second);
    }
}
