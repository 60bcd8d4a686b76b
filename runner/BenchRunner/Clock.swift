import Foundation

/// Monotonic nanoseconds that do not jump with wall-clock changes (CLOCK_UPTIME_RAW; the screen never sleeps
/// during a job, so uptime and elapsed time agree).
enum Monotonic {
    static func now() -> UInt64 {
        clock_gettime_nsec_np(CLOCK_UPTIME_RAW)
    }

    static func elapsed(since start: UInt64) -> UInt64 {
        let end = now()
        return end >= start ? end - start : 0
    }
}

/// ISO 8601 wall-clock time for started_at / finished_at (informational only; durations use Monotonic).
enum WallClock {
    static func iso8601() -> String {
        ISO8601DateFormatter().string(from: Date())
    }
}
