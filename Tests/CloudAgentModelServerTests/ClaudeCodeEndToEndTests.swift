import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentModelServer
import Foundation
import Testing

/// The real Claude Code CLI against the scripted model server, in a temporary git repository.
@Suite(
    .long,
    .serialized,
    .enabled(if: AgentBinaries.claude != nil, "Claude Code not found: set CLOUD_AGENT_CLAUDE_BIN or put `claude` on PATH")
)
struct ClaudeCodeEndToEndTests {
    let cli = ClaudeCodeCLI(binary: AgentBinaries.claude ?? "claude")

    static let script = """
        {"turns": [
          {"shell": "echo hello from the script > hello.txt", "description": "Write hello.txt"},
          {"text": "I wrote hello.txt."},
          {"text": "Still the same conversation."}
        ]}
        """

    @Test func shellToolCallWritesAFileThenTheFinalTextIsTheResult() async throws {
        let sandbox = try await AgentSandbox.make("claude-tool")
        defer { sandbox.remove() }
        let server = try await ModelServerProcess.start(script: Self.script, in: sandbox.root)
        let run = try cli.run("Write hello.txt", sandbox: sandbox, server: server)
        try await run.waitForExit(within: 60)
        await server.stop()

        #expect(run.exitStatus == 0, "stderr: \(run.stderr)")
        let written = try String(contentsOf: sandbox.workspace.appendingPathComponent("hello.txt"), encoding: .utf8)
        #expect(written == "hello from the script\n")
        let lines = run.jsonLines
        let toolUse = lines.compactMap { $0.value("message", "content")?.arrayValue }.joined().first { $0.objectValue?["type"] == "tool_use" }
        #expect(toolUse?.objectValue?["name"] == "Bash")
        #expect(toolUse?.objectValue?["input"]?.objectValue?["command"] == "echo hello from the script > hello.txt")
        let result = try #require(lines.last { $0["type"] == "result" })
        #expect(result["subtype"] == "success")
        #expect(result["is_error"] == false)
        #expect(result["result"] == "I wrote hello.txt.")

        let main = try server.recorded().filter(\.main)
        #expect(main.map(\.reply) == ["tool:Bash", "text"])
        #expect(main.allSatisfy { $0.tools.contains("Bash") })
    }

    @Test func resumeSendsTheEarlierTurnsBack() async throws {
        let sandbox = try await AgentSandbox.make("claude-resume")
        defer { sandbox.remove() }
        let server = try await ModelServerProcess.start(script: Self.script, in: sandbox.root)
        let first = try cli.run("Write hello.txt", sandbox: sandbox, server: server)
        try await first.waitForExit(within: 60)
        let sessionID = try #require(first.jsonLines.first { $0["type"] == "system" && $0["subtype"] == "init" }?["session_id"]?.stringValue)
        let before = try server.recorded().count

        let second = try cli.run("And now?", resume: sessionID, sandbox: sandbox, server: server)
        try await second.waitForExit(within: 60)
        await server.stop()

        #expect(second.exitStatus == 0, "stderr: \(second.stderr)")
        #expect(second.jsonLines.last { $0["type"] == "result" }?["result"] == "Still the same conversation.")
        #expect(second.jsonLines.first?["session_id"]?.stringValue == sessionID)
        let resumed = try #require(try server.recorded().dropFirst(before).first(where: \.main))
        let transcript = JSONValue.array(resumed.messages).compactText
        #expect(transcript.contains("Write hello.txt"))
        #expect(transcript.contains("echo hello from the script > hello.txt"))
        #expect(transcript.contains("I wrote hello.txt."))
        #expect(transcript.contains("And now?"))
        #expect(resumed.conversationId == sessionID)
    }

    @Test func anErrorTurnEndsTheRunFailed() async throws {
        let sandbox = try await AgentSandbox.make("claude-error")
        defer { sandbox.remove() }
        // A 5xx with `x-should-retry: false` (the server's default) is not retried; a 400 would
        // be retried five times with fewer beta features.
        let server = try await ModelServerProcess.start(
            script: #"[{"error": {"status": 500, "message": "Scripted model failure"}}]"#, in: sandbox.root
        )
        let run = try cli.run("Fail, please", sandbox: sandbox, server: server)
        try await run.waitForExit(within: 60)
        await server.stop()

        #expect(run.exitStatus != 0)
        let result = try #require(run.jsonLines.last { $0["type"] == "result" })
        #expect(result["is_error"] == true)
        #expect(result["api_error_status"] == 500)
        #expect(result["result"]?.stringValue?.contains("Scripted model failure") == true)
        #expect(try server.recorded().filter(\.main).map(\.reply) == ["error:500"])
    }
}
