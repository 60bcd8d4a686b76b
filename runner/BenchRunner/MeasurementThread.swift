import Foundation

/// One thread of its own for the blocking Core ML predictions. A synchronous `prediction(from:)` loop can run
/// for minutes; on a Swift-concurrency task it would hold one of the few cooperative-pool threads the whole time
/// (starving every other task, the progress updates included). Here it blocks only this thread, and callers
/// simply `await` the result. Work items run one after another, in submission order. One per process
/// (`shared`): the thread holds its object and lives as long as the app, which runs one job per launch.
final class MeasurementThread: @unchecked Sendable {
    static let shared = MeasurementThread()

    private let condition = NSCondition()  // guards `pending`
    private var pending: [() -> Void] = []

    private init(name: String = "bench.runner.measure") {
        let thread = Thread {
            self.serve()
        }
        thread.name = name
        thread.qualityOfService = .userInitiated
        thread.stackSize = 8 * 1024 * 1024  // Core ML predictions can recurse deeply in the framework
        thread.start()
    }

    /// Runs `body` on the measurement thread and returns what it returned (or throws what it threw).
    /// The caller is suspended meanwhile, so the objects `body` uses are never touched by two threads at once.
    func run<T>(_ body: @escaping () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            submit {
                continuation.resume(with: Result { try body() })
            }
        }
    }

    private func submit(_ work: @escaping () -> Void) {
        condition.lock()
        pending.append(work)
        condition.signal()
        condition.unlock()
    }

    /// The thread's whole life: wait for work, run it, repeat.
    private func serve() {
        while true {
            condition.lock()
            while pending.isEmpty {
                condition.wait()
            }
            let work = pending.removeFirst()
            condition.unlock()
            work()
        }
    }
}
