import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentModelServer
import Foundation
import Testing

/// The real Codex CLI against the scripted model server, in a temporary git repository.
@Suite(
    .long,
    .serialized,
    .enabled(if: AgentBinaries.codex != nil, "Codex not found: set CLOUD_AGENT_CODEX_BIN or put `codex` on PATH")
)
struct CodexEndToEndTests {
    let cli = CodexCLI(binary: AgentBinaries.codex ?? "codex")

    static let script = """
        {"turns": [
          {"shell": "echo hello from the script > hello.txt"},
          {"text": "I wrote hello.txt."},
          {"text": "Still the same conversation."}
        ]}
        """

    @Test func shellToolCallWritesAFileThenTheFinalTextCompletesTheTurn() async throws {
        let sandbox = try await AgentSandbox.make("codex-tool")
        defer { sandbox.remove() }
        let server = try await ModelServerProcess.start(script: Self.script, in: sandbox.root)
        let run = try cli.run("Write hello.txt", sandbox: sandbox, server: server)
        try await run.waitForExit(within: 60)
        await server.stop()

        #expect(run.exitStatus == 0, "stderr: \(run.stderr)")
        let written = try String(contentsOf: sandbox.workspace.appendingPathComponent("hello.txt"), encoding: .utf8)
        #expect(written == "hello from the script\n")
        let items = run.jsonLines.filter { $0["type"] == "item.completed" }.compactMap { $0["item"]?.objectValue }
        let command = try #require(items.first { $0["type"] == "command_execution" }, "stdout: \(run.stdout)")
        #expect(command["command"]?.stringValue?.contains("echo hello from the script > hello.txt") == true)
        #expect(command["exit_code"] == 0)
        #expect(items.last { $0["type"] == "agent_message" }?["text"] == "I wrote hello.txt.")
        #expect(run.jsonLines.last?["type"] == "turn.completed")

        // The default model works in Codex's code mode: the shell is reached through the
        // JavaScript `exec` tool; an explicit older model gets `exec_command` itself.
        let main = try server.recorded().filter(\.main)
        #expect(main.count == 2)
        #expect(main.first?.reply == "tool:exec" || main.first?.reply == "tool:exec_command")
        #expect(main.last?.reply == "text")
    }

    @Test func resumeSendsTheEarlierTurnsBack() async throws {
        let sandbox = try await AgentSandbox.make("codex-resume")
        defer { sandbox.remove() }
        let server = try await ModelServerProcess.start(script: Self.script, in: sandbox.root)
        let first = try cli.run("Write hello.txt", sandbox: sandbox, server: server)
        try await first.waitForExit(within: 60)
        let threadID = try #require(first.jsonLines.first { $0["type"] == "thread.started" }?["thread_id"]?.stringValue)
        let before = try server.recorded().count

        let second = try cli.run("And now?", resume: threadID, sandbox: sandbox, server: server)
        try await second.waitForExit(within: 60)
        await server.stop()

        #expect(second.exitStatus == 0, "stderr: \(second.stderr)")
        #expect(second.jsonLines.first { $0["type"] == "thread.started" }?["thread_id"]?.stringValue == threadID)
        let texts = second.jsonLines.compactMap { $0["item"]?.objectValue }.filter { $0["type"] == "agent_message" }
        #expect(texts.last?["text"] == "Still the same conversation.")
        let resumed = try #require(try server.recorded().dropFirst(before).first(where: \.main))
        let transcript = JSONValue.array(resumed.messages).compactText
        #expect(transcript.contains("Write hello.txt"))
        #expect(transcript.contains("echo hello from the script > hello.txt"))
        #expect(transcript.contains("I wrote hello.txt."))
        #expect(transcript.contains("And now?"))
        #expect(resumed.conversationId == threadID)
    }

    @Test func anErrorTurnFailsTheTurn() async throws {
        let sandbox = try await AgentSandbox.make("codex-error")
        defer { sandbox.remove() }
        let server = try await ModelServerProcess.start(
            script: #"[{"error": {"status": 400, "message": "Scripted model failure"}}]"#, in: sandbox.root
        )
        let run = try cli.run("Fail, please", sandbox: sandbox, server: server)
        try await run.waitForExit(within: 60)
        await server.stop()

        #expect(run.exitStatus != 0)
        let failed = try #require(run.jsonLines.last { $0["type"] == "turn.failed" })
        #expect(failed.value("error", "message")?.stringValue?.contains("Scripted model failure") == true)
        #expect(run.jsonLines.contains { $0["type"] == "error" })
        #expect(!run.jsonLines.contains { $0["type"] == "turn.completed" })
        #expect(try server.recorded().filter(\.main).map(\.reply) == ["error:400"])
    }
}
