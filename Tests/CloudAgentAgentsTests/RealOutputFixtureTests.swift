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
        // The result's usage and cost, before the result itself.
        var usageParser = ClaudeCodeOutputParser()
        let result = try #require(try lines("claude-code-stream.jsonl").first { $0.contains(#""type":"result""#) })
        let items = usageParser.parse(line: result)
        #expect(items.first == .usage(AgentUsage.data(input: 25105, output: 30, cacheRead: 0, cacheWrite: 0, costUsd: 0.10102)))
        #expect(items.last == .endOfInput)
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

    @Test("Codex's app server: thread, turn, a declined command then an accepted one with its output and exit code, messages, turn completed")
    func codex() throws {
        var parser = CodexAppServerParser(prompt: "Write two files.", resume: nil, model: nil, asks: true, readOnly: false)
        var events: [[String: JSONValue]] = []
        var replies: [String] = []
        var requests: [AgentInputRequest] = []
        var ended = false
        var usage: [[String: JSONValue]] = []
        for line in try lines("codex-app-server.jsonl") {
            for item in parser.parse(line: line) {
                switch item {
                case .agent(let data): events.append(data)
                case .reply(let reply): replies.append(reply)
                case .inputRequest(let request): requests.append(request)
                case .endOfInput: ended = true
                case .usage(let data): usage.append(data)
                case .output, .withdrawn: break
                }
            }
        }
        // Three model responses: the turn's usage grows with each (the sum of each one's `last`); no cost.
        #expect(usage.count == 3)
        #expect(usage.last == AgentUsage.data(input: 42472, output: 80))
        #expect(usage.map { $0["inputTokens"]?.doubleValue ?? 0 } == [13955, 28110, 42472])
        // initialize's answer: initialized, then thread/start; the thread's: turn/start with the prompt.
        #expect(replies.count == 3)
        #expect(replies[0] == #"{"method":"initialized"}"# + "\n")
        #expect(replies[1].contains(#""method":"thread/start""#) && replies[1].contains(#""approvalPolicy":"untrusted""#))
        #expect(replies[1].contains(#""sandbox":"danger-full-access""#))
        #expect(
            replies[2].contains(#""method":"turn/start""#) && replies[2].contains("Write two files.")
                && replies[2].contains("01a25211-9fec-7760-942c-7a3a199b1286"))
        #expect(requests.map { $0.data["input"]?["command"]?.stringValue } == ["echo no > declined.txt", "echo yes > accepted.txt && cat accepted.txt"])
        #expect(requests.allSatisfy { $0.data["tool"] == "shell" && $0.data["kind"] == "permission" })
        #expect(requests.map(\.agentRequestId) == ["0", "1"])
        let tools = events.filter { $0["kind"] == "tool" }
        #expect(tools.map { $0["status"]?.stringValue ?? "" } == ["running", "failed", "running", "completed"])
        #expect(tools[1]["output"] == "declined")
        #expect(tools[3]["output"] == "yes\n")
        #expect(tools[3]["exitCode"] == .number(0))
        #expect(events.contains { $0["kind"] == "text" && $0["text"] == "Done: one command was declined, one ran." })
        #expect(parser.conversationId == "01a25211-9fec-7760-942c-7a3a199b1286")
        #expect(parser.outcome == .succeeded)
        #expect(ended)
    }

    @Test("Codex's app server: a model error fails the execution with the model's own message")
    func codexError() throws {
        var parser = CodexAppServerParser(prompt: "go", resume: nil, model: nil, asks: false, readOnly: false)
        var texts: [String] = []
        for line in try lines("codex-app-server-error.jsonl") {
            for case .agent(let data) in parser.parse(line: line) where data["kind"] == "error" { texts.append(data["message"]?.stringValue ?? "") }
        }
        #expect(parser.outcome == .failed("Scripted model failure"))
        #expect(texts.last == "Scripted model failure")
    }
}
