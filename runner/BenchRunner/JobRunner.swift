import CoreML
import Foundation
import os

enum JobError: LocalizedError {
    case invalidJobId(String)
    case unreadableJob(String)
    case unsupportedSchema(String, Int)
    case jobIdMismatch(String, String)
    case unknownMode(String)
    case unknownComputeUnit(String)
    case unknownVariant(String)
    case modelUnavailable(String)
    case leftForeground(String)

    var errorDescription: String? {
        switch self {
        case .invalidJobId(let id):
            return "job id \(id) is not a valid folder name"
        case .unreadableJob(let reason):
            return "cannot read job.json: \(reason)"
        case .unsupportedSchema(let schema, let version):
            return "job.json is \(schema) v\(version); this runner reads bench.job v\(ContractNames.jobSchemaVersion) (update the runner)"
        case .jobIdMismatch(let expected, let found):
            return "job.json has job_id \(found) but the runner was launched for \(expected)"
        case .unknownMode(let mode):
            return "unknown job mode \(mode)"
        case .unknownComputeUnit(let unit):
            return "unknown compute unit \(unit)"
        case .unknownVariant(let variant):
            return "step names variant \(variant) that the job does not list"
        case .modelUnavailable(let reason):
            return reason
        case .leftForeground(let reason):
            return reason
        }
    }
}

/// Runs one job from Documents/bench/jobs/<id>/job.json and writes results/<id>/{result.partial.json,
/// result.json, DONE}. It stays dumb: raw nanoseconds only, statistics happen on the host. An error in one
/// step is recorded in that step and the next step still runs, except leaving the foreground (AppState.swift):
/// that stops the job, which then fails with the app states it saw.
final class JobRunner {
    private let jobId: String
    private let paths: ContainerPaths
    private let progress: @Sendable (String) -> Void
    private let appState: AppStateWatch
    private let log = Logger(subsystem: "bench.runner", category: "job")
    private let origin = Monotonic.now()
    private var result: ResultFile
    private var compiled: [String: (encoder: URL, decoder: URL)] = [:]
    private var compileErrors: [String: String] = [:]
    /// Compiled models this job made and keeps for no later job: deleted when it ends.
    private var temporaryCompiled: [URL] = []
    /// (variant, package) taken compiled from an earlier job: its first load here is not a cold load.
    private var reusedPackages: Set<String> = []

    init(jobId: String, paths: ContainerPaths, device: DeviceConditions, appState: AppStateWatch,
         progress: @escaping @Sendable (String) -> Void) {
        self.jobId = jobId
        self.paths = paths
        self.appState = appState
        self.progress = progress
        self.result = ResultFile(
            job_id: jobId, status: "partial", error: nil, runner_version: DeviceProbe.runnerVersion(),
            started_at: WallClock.iso8601(), finished_at: nil, device: device, compiles: [], steps: [])
    }

    func run() async {
        say("job \(jobId): started")
        clearStaleResults()
        writePartial()
        do {
            let job = try loadJob()
            switch job.mode {
            case "status":
                break
            case "measure":
                try await measure(job)
            default:
                throw JobError.unknownMode(job.mode)
            }
            result.status = "complete"
        } catch {
            result.status = "failed"
            result.error = describe(error)
            log.error("job \(self.jobId, privacy: .public) failed: \(self.describe(error), privacy: .public)")
        }
        result.finished_at = WallClock.iso8601()
        finish()
        removeCompiledModels()
    }

    // MARK: - job

    private func loadJob() throws -> Job {
        guard ContainerPaths.isValidJobId(jobId) else {
            throw JobError.invalidJobId(jobId)
        }
        let data: Data
        let header: JobHeader
        do {
            data = try Data(contentsOf: paths.jobFile(jobId))
            header = try JSONDecoder().decode(JobHeader.self, from: data)
        } catch {
            throw JobError.unreadableJob(describe(error))
        }
        // Kind and version first, so a newer job says "update the runner" rather than failing to decode.
        guard header.schema == ContractNames.jobSchema, header.schema_version == ContractNames.jobSchemaVersion else {
            throw JobError.unsupportedSchema(header.schema, header.schema_version)
        }
        let job: Job
        do {
            job = try JSONDecoder().decode(Job.self, from: data)
        } catch {
            throw JobError.unreadableJob(describe(error))
        }
        guard job.job_id == jobId else {
            throw JobError.jobIdMismatch(jobId, job.job_id)
        }
        return job
    }

    private func measure(_ job: Job) async throws {
        try appState.requireForeground(during: "start")
        for model in job.models {
            await compile(model)
            writePartial()
        }
        let models = Dictionary(job.models.map { ($0.variant_id, $0) }, uniquingKeysWith: { first, _ in first })
        for (index, step) in job.steps.enumerated() {
            say("step \(index + 1)/\(job.steps.count): \(step.variant_id) on \(step.compute_unit)")
            var record = StepRecord(variant_id: step.variant_id, compute_unit: step.compute_unit, error: nil)
            do {
                guard let model = models[step.variant_id] else {
                    throw JobError.unknownVariant(step.variant_id)
                }
                try await run(step, model: model, job: job, into: &record)
            } catch {
                // Out of the foreground the step's error (often a refused GPU submission) is a symptom: stop.
                try appState.requireForeground(during: "step \(index + 1)/\(job.steps.count)")
                record.error = describe(error)
                log.error("step \(index, privacy: .public) failed: \(self.describe(error), privacy: .public)")
            }
            result.steps.append(record)
            writePartial()
        }
    }

    // MARK: - compile

    /// Compiles both packages on the device, timed, unless the job names where an earlier job of the same run kept
    /// them compiled (`models[].compiled`): then they are reused, and a package compiled here is kept there for
    /// the jobs after this one. The first load after a compile is the cold load.
    private func compile(_ model: JobModel) async {
        var urls: [URL] = []
        let kept = [model.compiled?.encoder, model.compiled?.decoder]
        for (index, (package, relative)) in [("encoder", model.encoder), ("decoder", model.decoder)].enumerated() {
            var record = CompileRecord(variant_id: model.variant_id, package: package, compile_ns: nil, error: nil)
            do {
                let keepAt = try kept[index].map { try paths.resolve($0) }
                if let keepAt = keepAt, CompiledStore.holds(keepAt) {
                    record.reused = true
                    reusedPackages.insert("\(model.variant_id)/\(package)")
                    urls.append(keepAt)
                    say("reusing compiled \(model.variant_id) \(package)")
                } else {
                    let source = try paths.resolve(relative)
                    let start = Monotonic.now()
                    let compiledURL = try await MLModel.compileModel(at: source)
                    record.compile_ns = Monotonic.elapsed(since: start)
                    // Kept for the run's later jobs when the job says where; else (or when keeping failed:
                    // those jobs then compile again) deleted when this job ends.
                    let usable = keepAt.map { CompiledStore.keep(compiledURL, at: $0) } ?? compiledURL
                    if usable != keepAt {
                        temporaryCompiled.append(usable)
                    }
                    urls.append(usable)
                    say("compiled \(model.variant_id) \(package) in \(record.compile_ns ?? 0) ns")
                }
            } catch {
                record.error = describe(error)
                compileErrors[model.variant_id] = "compile \(package) failed: \(describe(error))"
                log.error("compile \(model.variant_id, privacy: .public) \(package, privacy: .public) failed: \(self.describe(error), privacy: .public)")
            }
            result.compiles.append(record)
        }
        if urls.count == 2 {
            compiled[model.variant_id] = (encoder: urls[0], decoder: urls[1])
        }
    }

    /// Deletes the compiled models no later job keeps; the run's kept ones (compiled/<scope>/) stay for its next
    /// jobs, and the host removes them when another run starts on this phone.
    private func removeCompiledModels() {
        for url in temporaryCompiled {
            try? FileManager.default.removeItem(at: url)
        }
        temporaryCompiled.removeAll()
        compiled.removeAll()
    }

    // MARK: - one step: (variant, compute unit)

    private func run(_ step: JobStep, model: JobModel, job: Job, into record: inout StepRecord) async throws {
        guard let urls = compiled[model.variant_id] else {
            throw JobError.modelUnavailable(compileErrors[model.variant_id] ?? "model \(model.variant_id) was not compiled")
        }
        guard let units = computeUnits(step.compute_unit) else {
            throw JobError.unknownComputeUnit(step.compute_unit)
        }
        let images = try StepInputs(model: model, paths: paths)
        let configuration = MLModelConfiguration()
        configuration.computeUnits = units

        // Cold: the first load with this configuration after compiling (Core ML specialises for the device
        // here). Those instances are released at once so two copies of a large model never coexist. A package
        // an earlier job of the run compiled had its cold load measured there: here the same first load only
        // makes the next one warm, and is not recorded (cold_load_ns stays null for it).
        let encoderFirst = try await timedLoad(urls.encoder, configuration).nanoseconds
        let decoderFirst = try await timedLoad(urls.decoder, configuration).nanoseconds
        if !reusedPackages.contains("\(model.variant_id)/encoder") {
            record.cold_load_ns.encoder = encoderFirst
        }
        if !reusedPackages.contains("\(model.variant_id)/decoder") {
            record.cold_load_ns.decoder = decoderFirst
        }

        // Warm: a second load, served from Core ML's cache; these instances are the ones measured.
        let (encoder, warmEncoderNs) = try await timedLoad(urls.encoder, configuration)
        record.warm_load_ns.encoder = warmEncoderNs
        let (decoder, warmDecoderNs) = try await timedLoad(urls.decoder, configuration)
        record.warm_load_ns.decoder = warmDecoderNs

        // Predictions are synchronous and can take minutes: they run on the measurement thread, never on a
        // Swift-concurrency pool thread. This task waits, so captioner and images are used by one thread at a time.
        let captioner = try Captioner(encoder: encoder, decoder: decoder, model: model)
        let what = "\(step.variant_id) on \(step.compute_unit)"
        for index in 0..<max(0, job.warmup) {
            let warm = try await foregroundSample(captioner, images, index % images.count, repeat: index, during: what)
            record.warmup.append(warm)
            if index == 0 {
                record.first_prediction_ns = warm.total_ns
            }
        }
        for repeatIndex in 0..<max(0, job.repeats) {
            for index in 0..<images.count {
                let measured = try await foregroundSample(captioner, images, index, repeat: repeatIndex, during: what)
                record.samples.append(measured)
                if record.first_prediction_ns == nil {
                    record.first_prediction_ns = measured.total_ns
                }
            }
        }
        say("measured \(model.variant_id) on \(step.compute_unit): \(record.samples.count) samples")

        // After the timed part, so reading the plan never disturbs a measurement.
        if job.compute_plan {
            await readComputePlan(urls: urls, units: units, into: &record)
        }
    }

    private func timedLoad(_ url: URL, _ configuration: MLModelConfiguration) async throws -> (model: MLModel, nanoseconds: UInt64) {
        let start = Monotonic.now()
        let model = try await MLModel.load(contentsOf: url, configuration: configuration)
        return (model: model, nanoseconds: Monotonic.elapsed(since: start))
    }

    /// One caption on the measurement thread, kept only if the app was in the foreground before and after it.
    private func foregroundSample(_ captioner: Captioner, _ images: StepInputs, _ index: Int, repeat number: Int,
                                  during what: String) async throws -> Sample {
        try appState.requireForeground(during: what)
        let measuring = MeasurementThread.shared
        let taken = try await measuring.run { try self.sample(captioner, images, index, repeat: number) }
        try appState.requireForeground(during: what)
        return taken
    }

    /// One caption of input `index`; the pixels are in memory before the clock starts.
    private func sample(_ captioner: Captioner, _ images: StepInputs, _ index: Int, repeat number: Int) throws -> Sample {
        let pixels = try images.pixels(index)
        let t = Monotonic.elapsed(since: origin)
        let thermal = DeviceProbe.thermalState()
        let timing = try captioner.caption(pixels)
        return Sample(
            image_id: images.imageId(index), repeat: number, encoder_ns: timing.encoderNs,
            decoder_ns: timing.decoderNs, total_ns: timing.totalNs, thermal_state: thermal, t_ns: t,
            tokens: timing.tokens, state_ns: timing.stateNs)
    }

    private func readComputePlan(urls: (encoder: URL, decoder: URL), units: MLComputeUnits, into record: inout StepRecord) async {
        if #available(iOS 17.4, *) {
            do {
                let encoderOps = try await ComputePlanReader.read(compiledModel: urls.encoder, computeUnits: units)
                let decoderOps = try await ComputePlanReader.read(compiledModel: urls.decoder, computeUnits: units)
                record.compute_plan = ComputePlanRecord(encoder: encoderOps, decoder: decoderOps)
            } catch {
                record.compute_plan_error = "MLComputePlan failed: \(describe(error))"
            }
        } else {
            record.compute_plan_error = "MLComputePlan needs iOS 17.4 or later"
        }
    }

    private func computeUnits(_ name: String) -> MLComputeUnits? {
        switch name {
        case "cpuOnly": return .cpuOnly
        case "cpuAndGPU": return .cpuAndGPU
        case "cpuAndNeuralEngine": return .cpuAndNeuralEngine
        case "all": return .all
        default: return nil
        }
    }

    // MARK: - results

    /// The result as JSON, cut to the schema's limits first (an over-long message or a NaN cost must not cost
    /// the whole result: the host refuses a result that breaks its schema, and JSONEncoder throws on NaN).
    private func encoded(_ record: ResultFile? = nil) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode((record ?? result).fittedToSchema())
    }

    /// A relaunch of the same job must never leave an old DONE next to new results.
    private func clearStaleResults() {
        guard ContainerPaths.isValidJobId(jobId) else {
            return
        }
        let folder = paths.resultsFolder(jobId)
        for name in [ContractNames.doneFile, ContractNames.resultFile, ContractNames.partialResultFile] {
            try? FileManager.default.removeItem(at: folder.appendingPathComponent(name))
        }
    }

    /// result.partial.json after each compile phase and each step: what a crash leaves behind for diagnosis.
    private func writePartial() {
        guard ContainerPaths.isValidJobId(jobId) else {
            return
        }
        result.app_states = appState.history
        do {
            try AtomicFile.write(encoded(), to: paths.resultsFolder(jobId).appendingPathComponent(ContractNames.partialResultFile))
        } catch {
            log.error("could not write result.partial.json: \(self.describe(error), privacy: .public)")
        }
    }

    /// result.json (atomic), then DONE: the host trusts result.json only once DONE exists. DONE is written on
    /// every path, so the host never waits out its timeout for a runner that has finished: when the full result
    /// cannot be written, a failed result saying why takes its place (the partial file stays for diagnosis).
    private func finish() {
        guard ContainerPaths.isValidJobId(jobId) else {
            log.fault("job id \(self.jobId, privacy: .public) is not a valid folder name; nothing written")
            return
        }
        let folder = paths.resultsFolder(jobId)
        let resultURL = folder.appendingPathComponent(ContractNames.resultFile)
        result.app_states = appState.history
        do {
            try AtomicFile.write(encoded(), to: resultURL)
        } catch {
            let reason = "could not write result.json: \(describe(error))"
            log.fault("\(reason, privacy: .public)")
            result = failedResult(reason)
            do {
                try AtomicFile.write(encoded(result), to: resultURL)
            } catch {
                log.fault("could not write the failed result either: \(self.describe(error), privacy: .public)")
            }
        }
        do {
            try AtomicFile.write(Data((result.status + "\n").utf8), to: folder.appendingPathComponent(ContractNames.doneFile))
        } catch {
            log.fault("could not write DONE: \(self.describe(error), privacy: .public)")
        }
        say("job \(jobId): \(result.status)")
    }

    /// The smallest result that answers the job: failed, why, no compiles or steps (nothing in it can fail to encode).
    private func failedResult(_ reason: String) -> ResultFile {
        var failed = result
        failed.status = "failed"
        failed.error = reason
        failed.finished_at = failed.finished_at ?? WallClock.iso8601()
        failed.compiles = []
        failed.steps = []
        return failed
    }

    /// Progress at the default ("notice") level: syslog_relay, which the host streams, drops info/debug lines.
    private func say(_ line: String) {
        log.notice("\(line, privacy: .public)")
        progress(line)
    }

    private func describe(_ error: Error) -> String {
        if let local = error as? LocalizedError, let text = local.errorDescription {
            return text
        }
        return String(describing: error)
    }
}
