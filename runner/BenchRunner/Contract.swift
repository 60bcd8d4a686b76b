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
    let decode: DecodeSettings
    let io: FeatureNames?
    let inputs: [JobInput]
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

    init(_ names: FeatureNames?) {
        encoderInput = names?.encoder_input ?? "pixel_values"
        encoderOutput = names?.encoder_output ?? "image_embeds"
        decoderInputIds = names?.decoder_input_ids ?? "input_ids"
        decoderImageEmbeds = names?.decoder_image_embeds ?? "image_embeds"
        decoderAttentionMask = names?.decoder_attention_mask ?? "attention_mask"
        decoderOutput = names?.decoder_output ?? "logits"
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
