import CloudAgentTestSupport
import Foundation
import Testing

@Suite("cloud-agent demo, as a real process", .processes)
struct DemoCommandTests {
    @Test("demo runs to completion within 90 s: live stream, the runtime kept through the silence, the idle stop and its reason, cleanup")
    func demoRuns() async throws {
        let directory = try TemporaryDirectory()
        defer { withExtendedLifetime(directory) {} }
        let demo = try SpawnedCommand(["demo"], environment: ["NO_COLOR": "1"], in: directory.url)
        defer { demo.forceStop() }
        let exited = try await demo.waitForExit(within: 90)
        try #require(exited, "the demo took longer than 90 s:\n\(demo.diagnostics)")
        #expect(demo.exitedNormally && demo.exitStatus == 0, "\(demo.diagnostics)")
        let output = demo.stdout
        #expect(!output.utf8.contains(0x1B), "escape bytes without a terminal")
        #expect(output.contains("⏺ run: ls → exit 0"), "\(output)")
        #expect(output.contains("⏺ write: notes.txt → ok"), "\(output)")
        #expect(output.contains("✓ execution completed"), "\(output)")
        #expect(output.contains("runtime `running` every time"), "\(output)")
        #expect(output.contains("stop reason: rule idle"), "\(output)")
        #expect(output.contains("idleTimeoutMs   3000"), "\(output)")
        #expect(output.contains("deleted"), "\(output)")
        // The temporary directory is gone.
        let removed = try #require(output.split(separator: "\n").first { $0.contains("server stopped, ") && $0.hasSuffix(" removed") }, "\(output)")
        let path = removed.components(separatedBy: "server stopped, ").last?.replacingOccurrences(of: " removed", with: "") ?? ""
        #expect(!path.isEmpty && !FileManager.default.fileExists(atPath: path), "\(path) was not removed")
    }

    static var claudeBinary: String? {
        ProcessInfo.processInfo.environment["CLOUD_AGENT_CLAUDE_BIN"].flatMap { FileManager.default.isExecutableFile(atPath: $0) ? $0 : nil }
    }

    @Test(
        "demo --agent claude-code: the real CLI against the scripted model server runs tools in the workspace, is kept through its silent tool, then stopped idle",
        .enabled(if: claudeBinary != nil, "set CLOUD_AGENT_CLAUDE_BIN (eval \"$(scripts/install-agents.sh)\")"))
    func demoWithClaudeCode() async throws {
        let directory = try TemporaryDirectory()
        defer { withExtendedLifetime(directory) {} }
        let claude = try #require(Self.claudeBinary)
        let demo = try SpawnedCommand(["demo", "--agent", "claude-code"], environment: ["NO_COLOR": "1", "CLOUD_AGENT_CLAUDE_BIN": claude], in: directory.url)
        defer { demo.forceStop() }
        let exited = try await demo.waitForExit(within: 150)
        try #require(exited, "the demo took longer than 150 s:\n\(demo.diagnostics)")
        #expect(demo.exitedNormally && demo.exitStatus == 0, "\(demo.diagnostics)")
        let output = demo.stdout
        #expect(output.contains("Claude Code (the real CLI)"), "\(output)")
        #expect(output.contains("Bash"), "\(output)")
        #expect(output.contains("Done: hello.sh ran and notes.txt is written."), "\(output)")
        #expect(output.contains("runtime `running` every time"), "\(output)")
        #expect(output.contains("stop reason: rule idle"), "\(output)")
    }
}
