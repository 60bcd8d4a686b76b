import CoreML
import Foundation

enum MeasureError: LocalizedError {
    case inputSize(String, expected: Int, found: Int)
    case missingOutput(String)
    case badLogits(String)
    case badDecoderLength(Int)
    case noInputs(String)

    var errorDescription: String? {
        switch self {
        case .inputSize(let path, let expected, let found):
            return "\(path): \(found) bytes, expected \(expected) (little-endian float32 of the job's shape)"
        case .missingOutput(let name):
            return "the model has no output named \(name) (set the job's io names to match the exported model)"
        case .badLogits(let reason):
            return "unexpected logits: \(reason)"
        case .badDecoderLength(let length):
            return "decoder input_ids length \(length) is too short for greedy decoding"
        case .noInputs(let variant):
            return "model \(variant) has no inputs to measure"
        }
    }
}

/// Reads a preprocessed image (inputs/<sha>.f32: little-endian float32, shape from the job).
enum PixelInput {
    static func load(_ url: URL, shape: [Int]) throws -> MLMultiArray {
        let data = try Data(contentsOf: url)
        let count = shape.reduce(1, *)
        guard data.count == count * MemoryLayout<Float32>.size else {
            throw MeasureError.inputSize(url.lastPathComponent, expected: count * MemoryLayout<Float32>.size, found: data.count)
        }
        let array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .float32)
        // A fresh MLMultiArray is contiguous, so the file's bytes map 1:1 onto its storage.
        data.withUnsafeBytes { (source: UnsafeRawBufferPointer) in
            array.withUnsafeMutableBytes { (destination: UnsafeMutableRawBufferPointer, _: [Int]) in
                destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[0..<min(source.count, destination.count)]))
            }
        }
        return array
    }
}

/// The inputs of one model for one step. Preloaded when they fit in `preloadLimitBytes` (the usual case);
/// otherwise each is read just before its sample, still outside the timed region. Nothing is kept across
/// steps, so memory stays bounded by one model's inputs.
final class StepInputs {
    static let preloadLimitBytes = 128 * 1024 * 1024
    private let items: [(imageId: String, url: URL, shape: [Int])]
    private var preloaded: [MLMultiArray]?

    init(model: JobModel, paths: ContainerPaths) throws {
        var items: [(imageId: String, url: URL, shape: [Int])] = []
        for input in model.inputs {
            items.append((imageId: input.image_id, url: try paths.resolve(input.path), shape: input.shape))
        }
        guard !items.isEmpty else {
            throw MeasureError.noInputs(model.variant_id)
        }
        self.items = items
        let bytes = items.reduce(0) { total, item in total + item.shape.reduce(MemoryLayout<Float32>.size, *) }
        if bytes <= Self.preloadLimitBytes {
            var loaded: [MLMultiArray] = []
            for item in items {
                loaded.append(try PixelInput.load(item.url, shape: item.shape))
            }
            preloaded = loaded
        }
    }

    var count: Int {
        items.count
    }

    func imageId(_ index: Int) -> String {
        items[index].imageId
    }

    func pixels(_ index: Int) throws -> MLMultiArray {
        if let loaded = preloaded {
            return loaded[index]
        }
        return try PixelInput.load(items[index].url, shape: items[index].shape)
    }
}

/// One timed caption: encoder once, then greedy decoding one decoder call per token.
struct CaptionTiming {
    var encoderNs: UInt64
    var decoderNs: [UInt64]
    var totalNs: UInt64
    var tokens: [Int]
}

/// A loaded encoder/decoder pair and the greedy decoding loop the host reproduces in PyTorch.
final class Captioner {
    let encoder: MLModel
    let decoder: MLModel
    let names: ResolvedFeatureNames
    let decode: DecodeSettings
    let decoderLength: Int
    private let idsType: MLMultiArrayDataType

    init(encoder: MLModel, decoder: MLModel, model: JobModel) throws {
        let names = ResolvedFeatureNames(model.io)
        self.encoder = encoder
        self.decoder = decoder
        self.names = names
        self.decode = model.decode
        let constraint = decoder.modelDescription.inputDescriptionsByName[names.decoderInputIds]?.multiArrayConstraint
        // The decoder was exported with fixed-length input_ids: the job may say how long, else the model does.
        let modelLength = constraint?.shape.last?.intValue ?? 0
        let length = model.decoder_length ?? (modelLength > 0 ? modelLength : model.decode.max_length)
        guard length >= 2 else {
            throw MeasureError.badDecoderLength(length)
        }
        self.decoderLength = length
        self.idsType = constraint?.dataType ?? .int32
    }

    func caption(_ pixels: MLMultiArray) throws -> CaptionTiming {
        let start = Monotonic.now()
        let encoderInput = try MLDictionaryFeatureProvider(
            dictionary: [names.encoderInput: MLFeatureValue(multiArray: pixels)])
        let encoderStart = Monotonic.now()
        let encoded = try encoder.prediction(from: encoderInput)
        let encoderNs = Monotonic.elapsed(since: encoderStart)
        guard let embeds = encoded.featureValue(for: names.encoderOutput)?.multiArrayValue else {
            throw MeasureError.missingOutput(names.encoderOutput)
        }

        let ids = try MLMultiArray(shape: [1, NSNumber(value: decoderLength)], dataType: idsType)
        for index in 0..<decoderLength {
            ids[index] = NSNumber(value: decode.pad_id)
        }
        ids[0] = NSNumber(value: decode.bos_id)
        // The builder's decoder step also takes an attention mask over the filled positions; feed it when declared.
        let maskDescription = decoder.modelDescription.inputDescriptionsByName[names.decoderAttentionMask]
        var mask: MLMultiArray? = nil
        if maskDescription != nil {
            let maskType = maskDescription?.multiArrayConstraint?.dataType ?? idsType
            let created = try MLMultiArray(shape: [1, NSNumber(value: decoderLength)], dataType: maskType)
            for index in 0..<decoderLength {
                created[index] = NSNumber(value: index == 0 ? 1 : 0)
            }
            mask = created
        }

        // Sequence = bos + generated tokens; like Hugging Face generate, max_length counts the bos token.
        let limit = min(decode.max_length, decoderLength)
        var tokens: [Int] = []
        var decoderNs: [UInt64] = []
        while true {
            let position = tokens.count  // index of the last token in ids
            var features: [String: MLFeatureValue] = [
                names.decoderInputIds: MLFeatureValue(multiArray: ids),
                names.decoderImageEmbeds: MLFeatureValue(multiArray: embeds),
            ]
            if let mask = mask {
                features[names.decoderAttentionMask] = MLFeatureValue(multiArray: mask)
            }
            let decoderInput = try MLDictionaryFeatureProvider(dictionary: features)
            let stepStart = Monotonic.now()
            let output = try decoder.prediction(from: decoderInput)
            decoderNs.append(Monotonic.elapsed(since: stepStart))
            guard let logits = output.featureValue(for: names.decoderOutput)?.multiArrayValue else {
                throw MeasureError.missingOutput(names.decoderOutput)
            }
            let next = try Self.argmax(logits, position: position)
            tokens.append(next)
            if next == decode.eos_id || tokens.count + 1 >= limit {
                break
            }
            ids[tokens.count] = NSNumber(value: next)
            mask?[tokens.count] = NSNumber(value: 1)
        }
        return CaptionTiming(
            encoderNs: encoderNs, decoderNs: decoderNs, totalNs: Monotonic.elapsed(since: start), tokens: tokens)
    }

    /// Argmax over the vocabulary at `position` for logits shaped [1, L, V], [L, V], [1, V] or [V].
    static func argmax(_ logits: MLMultiArray, position: Int) throws -> Int {
        let shape = logits.shape.map { $0.intValue }
        let strides = logits.strides.map { $0.intValue }
        guard let vocabulary = shape.last, let vocabularyStride = strides.last, vocabulary > 0 else {
            throw MeasureError.badLogits("empty shape \(shape)")
        }
        var base = 0
        if shape.count >= 2 {
            let sequenceAxis = shape.count - 2
            let row = shape[sequenceAxis] == 1 ? 0 : position
            guard row < shape[sequenceAxis] else {
                throw MeasureError.badLogits("position \(row) outside shape \(shape)")
            }
            base = row * strides[sequenceAxis]
        }
        switch logits.dataType {
        case .float32:
            return argmax(logits, Float32.self, base: base, stride: vocabularyStride, count: vocabulary)
        case .float16:
            return argmax(logits, Float16.self, base: base, stride: vocabularyStride, count: vocabulary)
        case .double:
            return argmax(logits, Double.self, base: base, stride: vocabularyStride, count: vocabulary)
        default:
            throw MeasureError.badLogits("unsupported data type \(logits.dataType.rawValue)")
        }
    }

    private static func argmax<Scalar: BinaryFloatingPoint & MLShapedArrayScalar>(
        _ array: MLMultiArray, _ type: Scalar.Type, base: Int, stride: Int, count: Int
    ) -> Int {
        array.withUnsafeBufferPointer(ofType: Scalar.self) { (buffer: UnsafeBufferPointer<Scalar>) -> Int in
            var best = 0
            var bestValue = buffer[base]
            for index in 1..<count {
                let value = buffer[base + index * stride]
                if value > bestValue {
                    best = index
                    bestValue = value
                }
            }
            return best
        }
    }
}
