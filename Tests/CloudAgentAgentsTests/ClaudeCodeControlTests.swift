import CloudAgentAgents
import CloudAgentProtocol
import Foundation
import Testing

/// Claude Code's control protocol (`--input-format stream-json --permission-prompt-tool stdio`),
/// on lines recorded from Claude Code 2.1.332 against the scripted model server.
@Suite("Claude Code's control protocol: its permission requests and questions, and their answers")
struct ClaudeCodeControlTests {
    static let bashRequest =
        #"{"type":"control_request","request_id":"34b21bca-e38e","request":{"subtype":"can_use_tool","tool_name":"Bash","display_name":"Bash","input":{"command":"echo hi > note.txt","description":"Write note"},"description":"Write note","permission_suggestions":[{"type":"addRules","rules":[{"toolName":"Bash","ruleContent":"echo hi *"}],"behavior":"allow","destination":"localSettings"}],"blocked_path":"/tmp/ws/note.txt","tool_use_id":"toolu_ce79"}}"#
    static let questionRequest =
        #"{"type":"control_request","request_id":"3c0226a3","request":{"subtype":"can_use_tool","tool_name":"AskUserQuestion","display_name":"AskUserQuestion","input":{"questions":[{"question":"Which colour?","header":"Colour","options":[{"label":"red","description":"Red"},{"label":"blue","description":"Blue"}],"multiSelect":false}]},"tool_use_id":"toolu_538f","requires_user_interaction":true}}"#

    func parse(_ line: String) -> [AgentOutputItem] {
        var parser = ClaudeCodeOutputParser()
        return parser.parse(line: line)
    }

    func request(_ line: String) throws -> AgentInputRequest {
        guard case .inputRequest(let request)? = parse(line).first else { throw AgentInvocationError("not an input request: \(line)") }
        return request
    }

    func decode(_ line: String) throws -> JSONValue {
        #expect(line.hasSuffix("\n") && line.dropLast().contains("\n") == false, "one line: \(line)")
        return try JSONDecoder().decode(JSONValue.self, from: Data(line.utf8))
    }

    @Test("can_use_tool is a permission request for the tool with its input; allow sends the input back, deny and timeout deny with words")
    func permission() throws {
        let request = try request(Self.bashRequest)
        #expect(request.agentRequestId == "34b21bca-e38e")
        #expect(request.data["kind"] == "permission")
        #expect(request.data["tool"] == "Bash")
        #expect(request.data["input"] == ["command": "echo hi > note.txt", "description": "Write note"])
        #expect(request.data["question"] == "Write note")

        let allow = try decode(request.reply.line(decision: "allow", optionId: nil, answer: nil))
        #expect(allow["type"] == "control_response")
        #expect(allow["response"]?["subtype"] == "success")
        #expect(allow["response"]?["request_id"] == "34b21bca-e38e")
        #expect(allow["response"]?["response"] == ["behavior": "allow", "updatedInput": ["command": "echo hi > note.txt", "description": "Write note"]])

        for (decision, words) in [("deny", "denied"), ("timeout", "input timeout"), ("cancelled", "cancelled")] {
            let answer = try decode(request.reply.line(decision: decision, optionId: nil, answer: nil))
            #expect(answer["response"]?["response"]?["behavior"] == "deny")
            #expect(answer["response"]?["response"]?["message"]?.stringValue?.contains(words) == true, "\(decision): \(answer)")
        }
    }

    @Test("AskUserQuestion is a question with its choices; a text, an object by question, header or position, or a list answers it in updatedInput.answers")
    func question() throws {
        let request = try request(Self.questionRequest)
        #expect(request.data["kind"] == "question")
        #expect(request.data["question"] == "Which colour?")
        #expect(request.data["choices"] == ["red", "blue"])

        func answers(_ answer: JSONValue) throws -> JSONValue? {
            let line = try decode(request.reply.line(decision: "answer", optionId: nil, answer: answer))
            #expect(line["response"]?["response"]?["behavior"] == "allow")
            #expect(line["response"]?["response"]?["updatedInput"]?["questions"]?.arrayValue?.count == 1)
            return line["response"]?["response"]?["updatedInput"]?["answers"]
        }
        #expect(try answers("blue") == ["Which colour?": "blue"])
        #expect(try answers(["Which colour?": "red"]) == ["Which colour?": "red"])
        #expect(try answers(["Colour": "red"]) == ["Which colour?": "red"])
        #expect(try answers(["1": "red"]) == ["Which colour?": "red"])
        #expect(try answers(["Colour": ["red", "blue"]]) == ["Which colour?": "red, blue"])
        #expect(try answers(["Something else": "red"]) == [:])

        let declined = try decode(request.reply.line(decision: "deny", optionId: nil, answer: nil))
        #expect(declined["response"]?["response"] == ["behavior": "deny", "message": "The user declined to answer."])
    }

    @Test("a control_cancel_request withdraws the request; another control request is refused at once; the result ends the input; responses are ignored")
    func controlFlow() {
        #expect(parse(#"{"type":"control_cancel_request","request_id":"34b21bca-e38e"}"#) == [.withdrawn(agentRequestId: "34b21bca-e38e")])
        let hook = parse(#"{"type":"control_request","request_id":"r9","request":{"subtype":"hook_callback","callback_id":"hook_0"}}"#)
        #expect(hook.count == 2)
        guard case .reply(let reply)? = hook.last else {
            Issue.record("no reply: \(hook)")
            return
        }
        #expect(reply.contains(#""subtype":"error""#) && reply.contains(#""request_id":"r9""#) && reply.hasSuffix("\n"))
        #expect(parse(#"{"type":"control_request","request":{"subtype":"can_use_tool"}}"#).allSatisfy { if case .agent = $0 { true } else { false } })
        #expect(parse(#"{"type":"control_response","response":{"subtype":"success","request_id":"x"}}"#).isEmpty)
        let result = parse(#"{"type":"result","subtype":"success","is_error":false,"result":"done","session_id":"s"}"#)
        #expect(result.last == .endOfInput)
    }

    @Test("the prompt is one user message line, whatever it holds")
    func prompt() throws {
        let line = ClaudeCodeControl.promptLine("two\nlines \"quoted\"")
        let message = try decode(line)
        #expect(message["type"] == "user")
        #expect(message["message"] == ["role": "user", "content": "two\nlines \"quoted\""])
    }
}

@Suite("Claude Code's init: MCP servers that could not be used")
struct ClaudeCodeMCPInitTests {
    @Test("a server skipped for its config or failed at start is an error event, with the server's name")
    func failures() {
        var parser = ClaudeCodeOutputParser()
        let items = parser.parse(
            line:
                #"{"type":"system","subtype":"init","session_id":"s","mcp_servers":[{"name":"notes","status":"failed"},{"name":"docs","status":"connected"}],"mcp_server_errors":[{"name":"bad","type":"invalid_config","message":"command: Command cannot be empty"}]}"#
        )
        let messages = items.compactMap { item -> String? in
            if case .agent(let data) = item, data["kind"] == "error" { return data["message"]?.stringValue }
            return nil
        }
        #expect(messages == ["MCP server bad: command: Command cannot be empty", "MCP server notes failed to start"])
    }
}
