import Foundation
import UIKit

/// The runner's application state (UIApplication.State), recorded at job start and on every change.
///
/// A phone that locks, takes a call or shows an app on top moves the runner out of the foreground: iOS then
/// suspends it and refuses GPU work, so what it would measure is not the model. The runner stops measuring as soon
/// as the state is not `active`, writes a failed result whose error says so (with every state it saw), then DONE.
/// Leaving the foreground asks iOS for background time, so that result and DONE get written before suspension.
final class AppStateWatch: @unchecked Sendable {
    static let leftForegroundPrefix = "app left the foreground"

    private let lock = NSLock()
    private let origin: UInt64
    private var current = "unknown"
    private var changes: [AppStateChange] = []
    private var observers: [NSObjectProtocol] = []
    private var backgroundTask = UIBackgroundTaskIdentifier.invalid

    @MainActor
    init(origin: UInt64) {
        self.origin = origin
        record(AppStateWatch.name(UIApplication.shared.applicationState))
        let transitions: [(Notification.Name, String)] = [
            (UIApplication.didBecomeActiveNotification, "active"),
            (UIApplication.willResignActiveNotification, "inactive"),
            (UIApplication.didEnterBackgroundNotification, "background"),
            (UIApplication.willEnterForegroundNotification, "inactive"),
        ]
        for (name, state) in transitions {
            observers.append(NotificationCenter.default.addObserver(forName: name, object: nil, queue: .main) { [weak self] _ in
                self?.record(state)
                if state != "active" {
                    self?.askForTimeToFinish()
                }
            })
        }
    }

    /// The state now and every state seen since the job started (for result.app_states).
    var state: String { lock.withLock { current } }
    var history: [AppStateChange] { lock.withLock { changes } }

    /// Waits (up to `seconds`) for the app to become active: a launch by DVT reaches `active` shortly after start.
    func waitUntilActive(seconds: Double) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while state != "active" && Date() < deadline {
            try? await Task.sleep(nanoseconds: 100_000_000)
        }
        return state == "active"
    }

    /// Throws when the app is not in the foreground: called before and after every measured prediction.
    func requireForeground(during what: String) throws {
        let now = state
        if now != "active" {
            throw JobError.leftForeground("\(AppStateWatch.leftForegroundPrefix) (\(now)) during \(what): phone "
                                          + "locked or another app in front; measuring stopped")
        }
    }

    /// Gives back the background time asked for (the job is written).
    @MainActor
    func jobFinished() {
        let task = lock.withLock { () -> UIBackgroundTaskIdentifier in
            let task = backgroundTask
            backgroundTask = .invalid
            return task
        }
        if task != .invalid {
            UIApplication.shared.endBackgroundTask(task)
        }
    }

    private func askForTimeToFinish() {
        let already = lock.withLock { backgroundTask != .invalid }
        if already {
            return
        }
        let task = UIApplication.shared.beginBackgroundTask(withName: "bench.finish") { [weak self] in
            Task { @MainActor in self?.jobFinished() }
        }
        lock.withLock { backgroundTask = task }
    }

    private func record(_ state: String) {
        lock.withLock {
            current = state
            changes.append(AppStateChange(state: state, t_ns: Monotonic.elapsed(since: origin)))
        }
    }

    static func name(_ state: UIApplication.State) -> String {
        switch state {
        case .active: return "active"
        case .inactive: return "inactive"
        case .background: return "background"
        @unknown default: return "unknown"
        }
    }
}
