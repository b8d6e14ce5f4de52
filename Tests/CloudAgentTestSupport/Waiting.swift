import Foundation
import Testing

/// A wait for a condition ran out of time (the issue is recorded where the wait was written).
public struct WaitTimeout: Error, CustomStringConvertible {
    public var what: String
    public init(_ what: String = "condition") { self.what = what }
    public var description: String { "timed out waiting for \(what)" }
}

/// Waits until `condition` holds, checking it every 20 ms: for conditions that another process
/// makes true (a runtime, an agent, a database), which no event of this process announces. When
/// `seconds` pass first, records an issue at the caller and throws `WaitTimeout`.
nonisolated(nonsending) public func eventually(
    within seconds: Double, _ what: String = "condition", sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () async throws -> Bool
) async throws {
    if try await holdsWithin(seconds: seconds, condition) { return }
    Issue.record("timed out after \(seconds) s waiting for \(what)", sourceLocation: sourceLocation)
    throw WaitTimeout(what)
}

/// The first non-nil value of `value`, checked every 20 ms; records an issue and throws
/// `WaitTimeout` after `seconds`.
nonisolated(nonsending) public func eventuallyValue<T>(
    within seconds: Double, _ what: String = "value", sourceLocation: SourceLocation = #_sourceLocation,
    _ value: () async throws -> T?
) async throws -> T {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while true {
        if let found = try await value() { return found }
        if ContinuousClock.now >= deadline { break }
        try await Task.sleep(for: .milliseconds(20))
    }
    Issue.record("timed out after \(seconds) s waiting for \(what)", sourceLocation: sourceLocation)
    throw WaitTimeout(what)
}

/// Whether `condition` holds within `seconds` (checked every 20 ms, and once more at the end):
/// for a test that asserts on the answer itself.
nonisolated(nonsending) public func holdsWithin(seconds: Double, _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// A fresh directory under the system's temporary directory, resolved (no symlinks).
public func makeTemporaryDirectory(_ prefix: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url.resolvingSymlinksInPath()
}

/// A fresh directory under the system's temporary directory, removed when the value is released
/// (or at `remove()`).
public final class TemporaryDirectory: Sendable {
    public let url: URL

    public init(_ name: String = "tests") throws {
        url = FileManager.default.temporaryDirectory
            .appendingPathComponent("cloud-agent-\(name)-\(UUID().uuidString.lowercased())", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit { remove() }

    /// A path below the directory.
    public func path(_ components: String...) -> URL {
        components.reduce(url) { $0.appendingPathComponent($1) }
    }

    /// The path of a file in the directory, as a string.
    public func path(for file: String) -> String { url.appendingPathComponent(file).path }

    public func remove() { try? FileManager.default.removeItem(at: url) }

    /// Every byte of every file below the directory (to look for what must never be written).
    public func allBytes() -> Data {
        var data = Data()
        let enumerator = FileManager.default.enumerator(at: url, includingPropertiesForKeys: [.isRegularFileKey])
        while let file = enumerator?.nextObject() as? URL {
            if (try? file.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true, let contents = try? Data(contentsOf: file) {
                data.append(contents)
            }
        }
        return data
    }
}
