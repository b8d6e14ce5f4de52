import CloudAgentTestSupport
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
