import SwiftUI
import UIKit

/// How the host names the job: launch argument `--job <id>` (DVT process control), else the environment
/// variable BENCH_JOB or BENCH_JOB_ID (bench.deploy sets both the argument and BENCH_JOB_ID).
enum LaunchOptions {
    static func jobId(arguments: [String] = ProcessInfo.processInfo.arguments,
                      environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        if let flag = arguments.firstIndex(of: "--job"), flag + 1 < arguments.count {
            return arguments[flag + 1]
        }
        for name in ["BENCH_JOB", "BENCH_JOB_ID"] {
            if let fromEnvironment = environment[name], !fromEnvironment.isEmpty {
                return fromEnvironment
            }
        }
        return nil
    }

    static var exitWhenDone: Bool {
        ProcessInfo.processInfo.arguments.contains("--exit-when-done")
    }
}

@MainActor
final class RunnerState: ObservableObject {
    @Published var lines: [String] = []
    private var started = false

    func start() async {
        guard !started else {
            return
        }
        started = true
        // A sleeping screen would suspend the app mid-measurement.
        UIApplication.shared.isIdleTimerDisabled = true
        guard let jobId = LaunchOptions.jobId() else {
            lines.append("No job: launch with --job <id> or BENCH_JOB=<id>.")
            return
        }
        let paths: ContainerPaths
        do {
            paths = try ContainerPaths()
        } catch {
            lines.append("No Documents folder: \(error.localizedDescription)")
            return
        }
        let device = DeviceProbe.read()
        // Recorded from job start; a DVT launch reaches "active" a moment after the first frame.
        let appState = AppStateWatch(origin: Monotonic.now())
        if !(await appState.waitUntilActive(seconds: 10)) {
            lines.append("Not in the foreground (\(appState.state)): the job will fail and say so.")
        }
        let show: @Sendable (String) -> Void = { line in
            Task { @MainActor [weak self] in
                self?.lines.append(line)
            }
        }
        // Measure off the main thread so the UI (and the idle-timer setting) stays responsive. Only Sendable values
        // (strings, paths, the device record, the progress closure) cross into the task; the JobRunner, which is
        // not Sendable, is made and used inside it (its predictions then run on MeasurementThread).
        await Task.detached(priority: .userInitiated) {
            // Imported models come as bench.generic-job (GenericJobRunner); captioners as bench.job.
            if GenericJobRunner.isGenericJob(jobId: jobId, paths: paths) {
                await GenericJobRunner(jobId: jobId, paths: paths, device: device, appState: appState, progress: show).run()
            } else {
                await JobRunner(jobId: jobId, paths: paths, device: device, appState: appState, progress: show).run()
            }
        }.value
        appState.jobFinished()
        if LaunchOptions.exitWhenDone {
            exit(0)
        }
    }
}

struct StatusView: View {
    @ObservedObject var state: RunnerState

    var body: some View {
        NavigationStack {
            List {
                ForEach(0..<state.lines.count, id: \.self) { index in
                    Text(state.lines[index])
                        .font(.system(.footnote, design: .monospaced))
                }
            }
            .navigationTitle("Bench runner")
        }
    }
}

@main
struct BenchRunnerApp: App {
    @StateObject private var state = RunnerState()

    var body: some Scene {
        WindowGroup {
            StatusView(state: state)
                .task {
                    await state.start()
                }
        }
    }
}
