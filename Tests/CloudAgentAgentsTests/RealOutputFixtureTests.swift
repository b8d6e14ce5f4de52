import CloudAgentAgents
import CloudAgentProtocol
import Foundation
import Testing

/// The parsers against real output: Tests/Fixtures/agents/*.jsonl are the stdout of Claude Code
/// 2.1.332 (`-p --output-format stream-json --verbose`) and Codex 0.163 (`exec --json`) run
/// against the scripted model server (a tool call writing a file, then a final text; and a run
/// whose model fails), with paths made neutral.
@Suite("Agent output parsers (real CLI output)")
struct RealOutputFixtureTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/agents")

    func lines(_ name: String) throws -> [String] {
        try String(contentsOf: Self.fixtures.appendingPathComponent(name), encoding: .utf8).split(separator: "\n").map(String.init)
    }

    @Test("Claude Code: init, text, Bash call and result, final text, success; its session_id")
    func claude() throws {
        let (events, outputs, parser) = read(ClaudeCodeOutputParser(), try lines("claude-code-stream.jsonl"))
        #expect(outputs == 0)
        #expect(
            kinds(events) == [
                "log: session 33457e0b-3dd8-4b23-9836-f5e54423ef20 started, model claude-opus-5-5",
                "text: I will write the file.", "tool: Bash running", "tool: Bash completed", "text: I wrote hello.txt.",
            ] + kinds(events).suffix(1))
        #expect(kinds(events).last?.hasPrefix("log: result: success") == true)
        #expect(events[2]["input"] == .string("echo hi > hello.txt && cat hello.txt"))
        #expect(events[3]["output"] == .string("hi"))
        #expect(parser.conversationId == "33457e0b-3dd8-4b23-9836-f5e54423ef20")
        #expect(parser.outcome == .succeeded)
    }

    @Test("Claude Code: an API error is a failed outcome with the CLI's own message")
    func claudeError() throws {
        let (events, _, parser) = read(ClaudeCodeOutputParser(), try lines("claude-code-stream-error.jsonl"))
        guard case .failed(let message)? = parser.outcome else {
            Issue.record("outcome \(String(describing: parser.outcome))")
            return
        }
        #expect(message.hasPrefix("API Error: 500 Scripted model failure"))
        #expect(events.last?["kind"] == .string("error"))
        #expect(parser.conversationId == "193fd700-2c14-4f88-b563-39eb32e06bf2")
    }

    @Test("Codex: thread, agent messages, command execution with its output and exit code, turn completed")
    func codex() throws {
        let (events, outputs, parser) = read(CodexOutputParser(), try lines("codex-exec.jsonl"))
        #expect(outputs == 0)
        #expect(
            kinds(events).prefix(6) == [
                "log: thread 01a21b41-c5ca-70b3-be6b-e27b6159b12a started", "log: turn started", "text: I will write the file.",
                "tool: shell running", "tool: shell completed", "text: I wrote hello.txt.",
            ])
        #expect(events[4]["output"] == .string("hi\n"))
        #expect(events[4]["exitCode"] == .number(0))
        #expect(events[4]["input"] == .string("/bin/bash -lc 'echo hi > hello.txt && cat hello.txt'"))
        #expect(parser.conversationId == "01a21b41-c5ca-70b3-be6b-e27b6159b12a")
        #expect(parser.outcome == .succeeded)
    }

    @Test("Codex: reconnect notices, then turn.failed: failed with the turn's message")
    func codexError() throws {
        let (events, _, parser) = read(CodexOutputParser(), try lines("codex-exec-error.jsonl"))
        #expect(parser.outcome == .failed("stream disconnected before completion: Scripted model failure"))
        #expect(events.filter { $0["kind"] == .string("error") }.count == 2)
        #expect(kinds(events).contains("log: Reconnecting... 1/1 (stream disconnected before completion: Scripted model failure)"))
    }
}
