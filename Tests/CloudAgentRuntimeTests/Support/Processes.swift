import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `<package root>/.build/debug/cloud-agent-runtime`, built by `swift build`.
func runtimeBinary() throws -> URL {
    let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // Support
        .deletingLastPathComponent()  // CloudAgentRuntimeTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()  // package root
    let url = packageRoot.appendingPathComponent(".build/debug/cloud-agent-runtime")
    try #require(FileManager.default.isExecutableFile(atPath: url.path), "build the executable first (swift build): \(url.path)")
    return url
}

/// A fresh directory under the system's temporary directory, resolved (no symlinks).
func makeTemporaryDirectory(_ prefix: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url.resolvingSymlinksInPath()
}

/// Polls `condition` until it holds; records an issue and throws after `seconds`.
func eventually(
    within seconds: Double,
    _ what: String,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    if try await condition() { return }
    Issue.record("timed out after \(seconds) s waiting for \(what)", sourceLocation: sourceLocation)
    throw WaitTimeout()
}

struct WaitTimeout: Error {}

/// A child process of the test whose stdin comes from a file and whose stdout and stderr go to
/// files (no pipes are read: Foundation's asynchronous pipe reading hangs on Linux).
final class TestProcess: @unchecked Sendable {
    let process = Process()
    let directory: URL
    let stdoutURL: URL
    let stderrURL: URL

    init(_ executable: URL, arguments: [String], environment: [String: String], directory: URL, stdin: String, in outputDirectory: URL) throws {
        self.directory = directory
        let name = "process-\(UUID().uuidString.prefix(8))"
        let stdinURL = outputDirectory.appendingPathComponent("\(name).stdin")
        stdoutURL = outputDirectory.appendingPathComponent("\(name).stdout")
        stderrURL = outputDirectory.appendingPathComponent("\(name).stderr")
        try Data(stdin.utf8).write(to: stdinURL)
        _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        process.executableURL = executable
        process.arguments = arguments
        process.environment = environment
        process.currentDirectoryURL = directory
        process.standardInput = try FileHandle(forReadingFrom: stdinURL)
        process.standardOutput = try FileHandle(forWritingTo: stdoutURL)
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        try process.run()
    }

    var stdout: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }
    var isRunning: Bool { process.isRunning }
    var pid: Int32 { process.processIdentifier }
    /// Valid once the process has exited.
    var exitStatus: Int32 { process.terminationStatus }
    var exitedNormally: Bool { process.terminationReason == .exit }

    func waitForExit(within seconds: Double, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        try await eventually(within: seconds, "process \(pid) to exit", sourceLocation: sourceLocation) { !self.isRunning }
    }

    func signal(_ number: Int32) {
        if process.isRunning { _ = kill(process.processIdentifier, number) }
    }

    /// SIGKILL if still running, then wait for it: no process outlives its test.
    func terminate() async {
        signal(SIGKILL)
        let deadline = ContinuousClock.now + .seconds(10)
        while process.isRunning, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }
}

/// The processes of a process group that are still alive (zombies do not count), read from /proc.
func livingProcesses(inGroup group: Int32) -> [Int32] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { entry -> Int32? in
        guard let pid = Int32(entry),
            let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        // After "pid (comm)": state ppid pgrp …
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 2, fields[0] != "Z", fields[0] != "X", Int32(fields[2]) == group else { return nil }
        return pid
    }
}

func isAlive(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return false }
    let state = stat[stat.index(after: close)...].split(separator: " ").first
    return state != "Z" && state != "X"
}
