//! Opening input files nobody vetted: a path that names a FIFO, a device or
//! a folder is refused instead of read (opening a FIFO for reading blocks
//! until a writer comes; a device can stream for ever).

use std::fs::File;
use std::path::Path;

/// Opens `path` for reading, as a regular file or not at all. The open is
/// non-blocking (so a FIFO is refused below instead of waited on; reads of
/// a regular file are unaffected) and the check is made on the open file,
/// so it cannot be swapped after it. Anything else is an
/// [`std::io::ErrorKind::InvalidInput`] error.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, a device or a folder)",
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_folders_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        for path in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
            let e = open_regular(path).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{path:?}");
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        let file = dir.path().join("f");
        std::fs::write(&file, b"bytes").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut open_regular(&file).unwrap(), &mut text).unwrap();
        assert_eq!(text, "bytes");
    }
}
