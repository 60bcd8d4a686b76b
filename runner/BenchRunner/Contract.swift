import Foundation

// The job/result contract shared with the host: bench/deploy/contract.py and the JSON Schemas in
// bench/deploy/schemas/. Wire structs use the JSON key names as property names (snake_case) on purpose:
// tests/test_runner_swift.py compares these property names with the schemas' properties, so a renamed
// key fails CI on Linux long before a device sees it.

enum ContractNames {
    static let containerFolder = "bench"          // Documents/bench
    static let jobsFolder = "jobs"
    static let resultsFolder = "results"
    static let jobFile = "job.json"
    static let partialResultFile = "result.partial.json"
    static let resultFile = "result.json"
    static let doneFile = "DONE"
    static let jobSchema = "bench.job"
    static let resultSchema = "bench.result"
    static let jobSchemaVersion = 1
    static let resultSchemaVersion = 1
}

// MARK: - job.json (read)

/// Read first: kind and version decide whether the rest can be understood.
struct JobHeader: Decodable {
    let schema: String
    let schema_version: Int
}

struct Job: Decodable {
    let schema: String
    let schema_version: Int
    let job_id: String
    let mode: String
    let warmup: Int
    let repeats: Int
    let compute_plan: Bool
    let models: [JobModel]
    let steps: [JobStep]
}

struct JobModel: Decodable {
    let variant_id: String
    let encoder: String
    let decoder: String
    let image_size: Int
    let decoder_length: Int?
    /// "recompute" (default) or "kv_cache": the decoder keeps its self-attention cache in Core ML state (iOS 18).
    let decoding: String?
    let decode: DecodeSettings
    let io: FeatureNames?
    /// Where to keep the compiled packages for later jobs of the same run (compile once per device per run);
    /// nil: compile in this job and delete the compiled models when it ends.
    let compiled: CompiledPaths?
    let inputs: [JobInput]
}

/// compiled/<run scope>/<package sha256>/<name>.mlmodelc, relative to Documents/bench.
struct CompiledPaths: Decodable {
    let encoder: String
    let decoder: String
}

struct DecodeSettings: Decodable {
    let bos_id: Int
    let eos_id: Int
    let pad_id: Int
    let max_length: Int
}

/// Core ML feature names as the builder exported them; every one is optional in the job.
struct FeatureNames: Decodable {
    let encoder_input: String?
    let encoder_output: String?
    let decoder_input_ids: String?
    let decoder_image_embeds: String?
    let decoder_attention_mask: String?
    let decoder_output: String?
    let decoder_position: String?
    let encoder_cross_keys: String?
    let encoder_cross_values: String?
}

struct JobInput: Decodable {
    let image_id: String
    let path: String
    let shape: [Int]
}

struct JobStep: Decodable {
    let variant_id: String
    let compute_unit: String
}

/// Feature names with the contract's defaults filled in (contract.DEFAULT_IO on the host).
struct ResolvedFeatureNames {
    let encoderInput: String
    let encoderOutput: String
    let decoderInputIds: String
    let decoderImageEmbeds: String
    let decoderAttentionMask: String
    let decoderOutput: String
    let decoderPosition: String
    let crossKeys: String
    let crossValues: String

    init(_ names: FeatureNames?) {
        encoderInput = names?.encoder_input ?? "pixel_values"
        encoderOutput = names?.encoder_output ?? "image_embeds"
        decoderInputIds = names?.decoder_input_ids ?? "input_ids"
        decoderImageEmbeds = names?.decoder_image_embeds ?? "image_embeds"
        decoderAttentionMask = names?.decoder_attention_mask ?? "attention_mask"
        decoderOutput = names?.decoder_output ?? "logits"
        decoderPosition = names?.decoder_position ?? "position"
        crossKeys = names?.encoder_cross_keys ?? "cross_keys"
        crossValues = names?.encoder_cross_values ?? "cross_values"
    }
}

// MARK: - result.json (written)

/// Encodes `nil` as JSON `null` instead of leaving the key out, so required-but-nullable keys are always present.
@propertyWrapper
struct Nullable<Value: Encodable>: Encodable {
    var wrappedValue: Value?

    init(wrappedValue: Value?) {
        self.wrappedValue = wrappedValue
    }

    func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        if let value = wrappedValue {
            try container.encode(value)
        } else {
            try container.encodeNil()
        }
    }
}

struct ResultFile: Encodable {
    var schema: String = ContractNames.resultSchema
    var schema_version: Int = ContractNames.resultSchemaVersion
    var job_id: String
    var status: String
    @Nullable var error: String? = nil
    var runner_version: String
    var started_at: String
    @Nullable var finished_at: String? = nil
    var device: DeviceConditions
    var compiles: [CompileRecord]
    var steps: [StepRecord]
    var app_states: [AppStateChange] = []
}

/// One application state the runner was in, and when (ns since the runner started watching, at launch).
struct AppStateChange: Encodable {
    var state: String
    var t_ns: UInt64
}

struct DeviceConditions: Encodable {
    var model_identifier: String
    var os_version: String
    var os_build: String
    var low_power_mode: Bool
    @Nullable var battery_level: Double? = nil
    var battery_state: String
    var thermal_state: String
}

struct CompileRecord: Encodable {
    var variant_id: String
    var package: String
    @Nullable var compile_ns: UInt64? = nil
    @Nullable var error: String? = nil
    /// Taken from the job's compiled path (an earlier job of the run compiled it): no compile, no cold load.
    var reused: Bool = false
}

struct LoadPair: Encodable {
    @Nullable var encoder: UInt64? = nil
    @Nullable var decoder: UInt64? = nil
}

struct Sample: Encodable {
    var image_id: String
    var `repeat`: Int
    var encoder_ns: UInt64
    var decoder_ns: [UInt64]
    var total_ns: UInt64
    var thermal_state: String
    var t_ns: UInt64
    var tokens: [Int]
    /// kv_cache decoding: making the caption's MLState (part of total_ns); null for recomputing decoders.
    @Nullable var state_ns: UInt64? = nil
}

struct OpRecord: Encodable {
    var name: String
    var type: String
    @Nullable var preferred: String? = nil
    var supported: [String]
    @Nullable var cost: Double? = nil
}

struct ComputePlanRecord: Encodable {
    /// Core ML's per-op cost is an estimate (MLComputePlan.Cost.weight), never a measurement.
    var cost_kind: String = "estimate"
    var encoder: [OpRecord]
    var decoder: [OpRecord]
}

struct StepRecord: Encodable {
    var variant_id: String
    var compute_unit: String
    @Nullable var error: String? = nil
    var cold_load_ns: LoadPair = LoadPair(encoder: nil, decoder: nil)
    var warm_load_ns: LoadPair = LoadPair(encoder: nil, decoder: nil)
    @Nullable var first_prediction_ns: UInt64? = nil
    var warmup: [Sample] = []
    var samples: [Sample] = []
    @Nullable var compute_plan: ComputePlanRecord? = nil
    @Nullable var compute_plan_error: String? = nil
}

// MARK: - fitting a result to the schema

/// The result schema's limits (bench/deploy/schemas/result.v1.schema.json; tests/test_runner_swift.py checks
/// that these equal the schema). Strings count Unicode scalars, as JSON Schema's maxLength does.
enum SchemaLimits {
    static let message = 4096          // error, compile/step error, compute_plan_error
    static let shortText = 64          // runner_version, started_at, finished_at, device strings
    static let imageId = 512
    static let opName = 1024
    static let opType = 256
    static let supportedDevices = 8
    static let perSampleItems = 4096   // decoder_ns and tokens
    static let tokenMax = 2147483647
}

enum Fit {
    /// At most `limit` Unicode scalars, marked with "…" when cut; `fallback` when empty and a value is required.
    static func text(_ value: String, _ limit: Int, fallback: String? = nil) -> String {
        if value.isEmpty, let fallback = fallback {
            return fallback
        }
        let scalars = value.unicodeScalars
        guard scalars.count > limit else {
            return value
        }
        var cut = String.UnicodeScalarView()
        cut.append(contentsOf: scalars.prefix(limit - 1))
        cut.append("…")
        return String(cut)
    }

    static func nullableText(_ value: String?, _ limit: Int) -> String? {
        value.map { text($0, limit) }
    }

    /// A fraction in [0, 1]; NaN (which JSONEncoder cannot write) becomes unknown.
    static func unit(_ value: Double?) -> Double? {
        guard let value = value, !value.isNaN else {
            return nil
        }
        return min(max(value, 0), 1)
    }
}

extension ResultFile {
    /// A copy within the schema's limits: the host validates every field and refuses the whole result otherwise.
    func fittedToSchema() -> ResultFile {
        var fitted = self
        fitted.error = Fit.nullableText(error, SchemaLimits.message)
        fitted.runner_version = Fit.text(runner_version, SchemaLimits.shortText, fallback: "unknown")
        fitted.started_at = Fit.text(started_at, SchemaLimits.shortText, fallback: "unknown")
        fitted.finished_at = Fit.nullableText(finished_at, SchemaLimits.shortText)
        fitted.device.model_identifier = Fit.text(device.model_identifier, SchemaLimits.shortText)
        fitted.device.os_version = Fit.text(device.os_version, SchemaLimits.shortText)
        fitted.device.os_build = Fit.text(device.os_build, SchemaLimits.shortText)
        fitted.device.battery_level = Fit.unit(device.battery_level)
        fitted.compiles = compiles.map { record in
            var record = record
            record.error = Fit.nullableText(record.error, SchemaLimits.message)
            return record
        }
        fitted.steps = steps.map { $0.fittedToSchema() }
        return fitted
    }
}

extension StepRecord {
    func fittedToSchema() -> StepRecord {
        var fitted = self
        fitted.error = Fit.nullableText(error, SchemaLimits.message)
        fitted.compute_plan_error = Fit.nullableText(compute_plan_error, SchemaLimits.message)
        fitted.warmup = warmup.map { $0.fittedToSchema() }
        fitted.samples = samples.map { $0.fittedToSchema() }
        if var plan = compute_plan {
            plan.encoder = plan.encoder.map { $0.fittedToSchema() }
            plan.decoder = plan.decoder.map { $0.fittedToSchema() }
            fitted.compute_plan = plan
        }
        return fitted
    }
}

extension Sample {
    /// decoder_ns and tokens are cut together, so each decoder step still has its token.
    func fittedToSchema() -> Sample {
        var fitted = self
        fitted.image_id = Fit.text(image_id, SchemaLimits.imageId)
        fitted.repeat = max(0, self.repeat)
        fitted.decoder_ns = Array(decoder_ns.prefix(SchemaLimits.perSampleItems))
        fitted.tokens = tokens.prefix(SchemaLimits.perSampleItems).map { min(max($0, 0), SchemaLimits.tokenMax) }
        return fitted
    }
}

extension OpRecord {
    func fittedToSchema() -> OpRecord {
        var fitted = self
        fitted.name = Fit.text(name, SchemaLimits.opName)
        fitted.type = Fit.text(type, SchemaLimits.opType)
        fitted.supported = Array(supported.prefix(SchemaLimits.supportedDevices))
        fitted.cost = Fit.unit(cost)
        return fitted
    }
}
