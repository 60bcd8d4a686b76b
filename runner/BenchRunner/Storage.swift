import Foundation

enum StorageError: LocalizedError {
    case unsafePath(String)
    case renameFailed(String, Int32)

    var errorDescription: String? {
        switch self {
        case .unsafePath(let path):
            return "unsafe container path \(path) (absolute, '..', backslash or NUL)"
        case .renameFailed(let path, let code):
            return "could not move a finished file into place at \(path) (errno \(code))"
        }
    }
}

/// The runner's folders inside its data container: Documents/bench/{models,inputs,jobs,results}.
struct ContainerPaths {
    let root: URL

    init() throws {
        let documents = try FileManager.default.url(
            for: .documentDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        root = documents.appendingPathComponent(ContractNames.containerFolder, isDirectory: true)
    }

    /// A job-relative path (models/<sha>/encoder.mlpackage, inputs/<sha>.f32) inside root, refusing escapes.
    func resolve(_ relative: String) throws -> URL {
        guard Self.isSafe(relative) else {
            throw StorageError.unsafePath(relative)
        }
        return root.appendingPathComponent(relative)
    }

    func jobFile(_ jobId: String) -> URL {
        root.appendingPathComponent(ContractNames.jobsFolder, isDirectory: true)
            .appendingPathComponent(jobId, isDirectory: true)
            .appendingPathComponent(ContractNames.jobFile)
    }

    func resultsFolder(_ jobId: String) -> URL {
        root.appendingPathComponent(ContractNames.resultsFolder, isDirectory: true)
            .appendingPathComponent(jobId, isDirectory: true)
    }

    static func isSafe(_ relative: String) -> Bool {
        if relative.isEmpty || relative.count > 1024 || relative.hasPrefix("/") || relative.hasPrefix("~") {
            return false
        }
        if relative.contains("\\") || relative.contains("\u{0}") {
            return false
        }
        let parts = relative.split(separator: "/", omittingEmptySubsequences: false)
        return !parts.contains { $0.isEmpty || $0 == "." || $0 == ".." }
    }

    /// Job ids name folders: same rule as the schema's pattern ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$.
    static func isValidJobId(_ jobId: String) -> Bool {
        guard let first = jobId.unicodeScalars.first, jobId.unicodeScalars.count <= 128 else {
            return false
        }
        let alphanumeric = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        let allowed = alphanumeric.union(CharacterSet(charactersIn: "._-"))
        return alphanumeric.contains(first) && jobId.unicodeScalars.allSatisfy { allowed.contains($0) }
    }
}

/// Nothing half-written: write beside the target under a temporary name, then rename(2) over it, which
/// replaces the target in one step on the same file system.
enum AtomicFile {
    static func write(_ data: Data, to url: URL) throws {
        let folder = url.deletingLastPathComponent()
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let temporary = folder.appendingPathComponent(".\(url.lastPathComponent).\(UUID().uuidString).tmp")
        try data.write(to: temporary)
        if rename(temporary.path, url.path) != 0 {
            let code = errno
            try? FileManager.default.removeItem(at: temporary)
            throw StorageError.renameFailed(url.path, code)
        }
    }
}

/// Compiled models kept for the later jobs of a run (compiled/<scope>/<sha256>/<name>.mlmodelc). A kept model is
/// complete or absent: it is moved beside its final name first, then renamed into place in one step.
enum CompiledStore {
    static func holds(_ url: URL) -> Bool {
        var isFolder: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder) && isFolder.boolValue
    }

    /// Moves a freshly compiled model (Core ML's temporary folder) to `url` and returns `url`; when that fails,
    /// returns where the compiled model is now (still usable by this job, not kept for the next).
    static func keep(_ compiled: URL, at url: URL) -> URL {
        let folder = url.deletingLastPathComponent()
        let temporary = folder.appendingPathComponent(".\(url.lastPathComponent).\(UUID().uuidString).tmp")
        do {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            try FileManager.default.moveItem(at: compiled, to: temporary)
        } catch {
            return compiled
        }
        if rename(temporary.path, url.path) == 0 {
            return url
        }
        guard holds(url) else {
            return temporary
        }
        try? FileManager.default.removeItem(at: temporary)  // a copy already in place is as good as ours
        return url
    }
}
