import CloudAgentAgents
import CloudAgentProtocol
import Foundation
import Testing

/// The events a parser makes of `lines`, as `kind: detail` strings, plus its report.
func read(_ parser: some AgentOutputParser, _ lines: [String]) -> (events: [[String: JSONValue]], outputs: Int, parser: any AgentOutputParser) {
    var parser = parser
    var events: [[String: JSONValue]] = []
    var outputs = 0
    for line in lines {
        for item in parser.parse(line: line) {
            switch item {
            case .agent(let data): events.append(data)
            case .output: outputs += 1
            case .inputRequest(let request):
                events.append(["kind": "inputRequest", "request": .object(request.data), "agentRequestId": .string(request.agentRequestId)])
            case .withdrawn(let id): events.append(["kind": "withdrawn", "message": .string(id)])
            case .reply(let line): events.append(["kind": "reply", "message": .string(line)])
            case .endOfInput: break  // Claude Code's result: tested on its own (ClaudeCodeControlTests)
            case .usage: break  // tested on its own (RealOutputFixtureTests, UsageParsingTests)
            }
        }
    }
    return (events, outputs, parser)
}

func kinds(_ events: [[String: JSONValue]]) -> [String] {
    events.map { event in
        let kind = event["kind"]?.stringValue ?? "?"
        switch kind {
        case "text": return "text: \(event["text"]?.stringValue ?? "")"
        case "tool": return "tool: \(event["name"]?.stringValue ?? "") \(event["status"]?.stringValue ?? "")"
        default: return "\(kind): \(event["message"]?.stringValue ?? "")"
        }
    }
}

@Suite("Agent output parsers (documented shapes)")
struct AgentOutputParserTests {
    @Test("Claude Code stream-json: init, text, tool call and its result, result; the session id is the conversation")
    func claude() {
        let lines = [
            #"{"type":"system","subtype":"init","session_id":"s-1","model":"claude-sonnet","tools":["Bash"]}"#,
            #"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"toolu_1","name":"Bash","input":{"command":"echo hi > a.txt","description":"write"}}]},"session_id":"s-1"}"#,
            #"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"done","is_error":false}]},"session_id":"s-1"}"#,
            #"{"type":"assistant","message":{"content":[{"type":"text","text":"Wrote a.txt."}]},"session_id":"s-1"}"#,
            #"{"type":"result","subtype":"success","is_error":false,"result":"Wrote a.txt.","num_turns":2,"duration_ms":812,"session_id":"s-1"}"#,
            "not json",
        ]
        let (events, outputs, parser) = read(ClaudeCodeOutputParser(), lines)
        #expect(
            kinds(events) == [
                "log: session s-1 started, model claude-sonnet", "tool: Bash running", "tool: Bash completed", "text: Wrote a.txt.",
                "log: result: success, 2 turns, 812 ms",
            ])
        #expect(events[1]["input"] == .string("echo hi > a.txt"))
        #expect(events[2]["input"] == .string("echo hi > a.txt"))
        #expect(events[2]["output"] == .string("done"))
        #expect(events.allSatisfy { $0["raw"]?.stringValue != nil })
        #expect(outputs == 1)
        #expect(parser.conversationId == "s-1")
        #expect(parser.outcome == .succeeded)
    }

    @Test("Claude Code: an error result fails the execution with its message; a failed tool is failed")
    func claudeFailure() {
        let (events, _, parser) = read(
            ClaudeCodeOutputParser(),
            [
                #"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t","name":"Bash","input":{"command":"false"}}]}}"#,
                #"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"exit 1"}],"is_error":true}]}}"#,
                #"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 500 overloaded","session_id":"s-2"}"#,
            ])
        #expect(kinds(events) == ["tool: Bash running", "tool: Bash failed", "error: API Error: 500 overloaded"])
        #expect(parser.outcome == .failed("API Error: 500 overloaded"))
        let (_, _, maxTurns) = read(ClaudeCodeOutputParser(), [#"{"type":"result","subtype":"error_max_turns","is_error":false,"session_id":"s"}"#])
        #expect(maxTurns.outcome == .failed("Claude Code ended with error_max_turns"))
    }

    @Test("command agents: jsonl normalized like the scripted agent, text as output")
    func command() {
        let jsonl = AgentOutputParsers.parser(for: AgentLaunch(kind: "command", binary: "/x", output: "jsonl"))
        let (events, outputs, _) = read(jsonl, [#"{"type":"text","text":"hi"}"#, "plain"])
        #expect(kinds(events) == ["text: hi"])
        #expect(outputs == 1)
        let text = AgentOutputParsers.parser(for: AgentLaunch(kind: "command", binary: "/x", output: "text"))
        let (none, lines, _) = read(text, [#"{"type":"text","text":"hi"}"#, "plain"])
        #expect(none.isEmpty)
        #expect(lines == 2)
    }

    @Test("a long tool output keeps its tail; a long input its head")
    func truncation() {
        let long = String(repeating: "x", count: 5000) + "END"
        var reader = ACPTurnReader()
        let update: JSONValue = [
            "sessionUpdate": "tool_call", "toolCallId": "c1", "title": "bash", "status": "completed",
            "rawInput": ["command": .string(String(repeating: "c", count: 1000))], "rawOutput": ["output": .string(long)],
        ]
        let events = reader.read(update: update, raw: "{}")
        let output = events[0]["output"]?.stringValue ?? ""
        #expect(output.hasSuffix("END"))
        #expect(output.count <= 2001)
        #expect((events[0]["input"]?.stringValue ?? "").count <= 301)
    }
}
