//! Wall-clock time as the API writes and reads it (RFC 3339, UTC).

pub(super) fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(super) use centralino_store::service::unix_now;

pub(super) use centralino_types::time::{parse_rfc3339, rfc3339};
