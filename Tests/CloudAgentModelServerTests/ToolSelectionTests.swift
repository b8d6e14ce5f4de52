import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import Testing

@testable import CloudAgentModelServer

/// The request shapes here are cut down from what Claude Code 2.1 and Codex 0.163 really send
/// (docs/model-server.md).
@Suite struct ToolSelectionTests {
    func json(_ text: String) throws -> JSONValue { try JSONText.decode(Data(text.utf8)) }

    static let claudeBody = #"""
        {"model": "claude-opus-5-5", "stream": true, "max_tokens": 128000,
         "messages": [{"role": "user", "content": [{"type": "text", "text": "Write hello.txt"}]}],
         "tools": [
           {"name": "Agent", "description": "Launch an agent", "input_schema": {"type": "object", "properties": {"prompt": {"type": "string"}}}},
           {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object",
             "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}, "description": {"type": "string"}},
             "required": ["command"]}},
           {"type": "web_search_20250305", "name": "web_search"}
         ]}
        """#

    static let codexFunctionBody = #"""
        {"model": "gpt-5", "stream": true,
         "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Write hello.txt"}]}],
         "tools": [
           {"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}, "workdir": {"type": "string"}}, "required": ["cmd"]}},
           {"type": "namespace", "name": "multi_agent_v1", "tools": [{"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}}]},
           {"type": "web_search"}
         ]}
        """#

    static let codexCodeModeBody = #"""
        {"model": "gpt-6.1-sol", "stream": true,
         "input": [
           {"type": "additional_tools", "role": "developer", "tools": [{"type": "namespace", "name": "functions", "tools": [
             {"type": "custom", "name": "exec", "description": "Run JavaScript code. Nested tools: `await tools.exec_command(...)`", "format": {"type": "grammar"}},
             {"type": "function", "name": "wait", "parameters": {"type": "object", "properties": {"cell_id": {"type": "string"}}}}
           ]}]},
           {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Write hello.txt"}]}
         ]}
        """#

    @Test func claudeCodeGetsBashWithACommandAndADescription() throws {
        let request = try ModelRequest(anthropic: try json(Self.claudeBody), conversationID: "s-1")
        #expect(request.tools.map(\.name) == ["Agent", "Bash", "web_search"])
        #expect(request.tools.last?.kind == .builtin)
        #expect(request.isMain)
        #expect(request.stream)
        #expect(request.conversationID == "s-1")
        let call = ToolSelection.shellCall("echo hi > hello.txt", description: "Write hello.txt", among: request.tools)
        #expect(call == ModelToolCall(name: "Bash", input: .arguments(["command": "echo hi > hello.txt", "description": "Write hello.txt"])))
        let undescribed = ToolSelection.shellCall("ls", description: nil, among: request.tools)
        #expect(undescribed?.input == .arguments(["command": "ls", "description": .string(ToolSelection.defaultDescription)]))
    }

    @Test func codexWithAnExplicitModelGetsExecCommandWithCmd() throws {
        let request = try ModelRequest(openAI: try json(Self.codexFunctionBody))
        #expect(request.tools.map(\.name) == ["exec_command", "spawn_agent", "web_search"])
        let call = ToolSelection.shellCall("echo hi > hello.txt", description: nil, among: request.tools)
        #expect(call == ModelToolCall(name: "exec_command", input: .arguments(["cmd": "echo hi > hello.txt"])))
    }

    @Test func aToolOfferedInANamespaceIsNamedNamespaceUnderscoreUnderscoreTool() throws {
        let body = #"""
            {"model": "gpt-5", "input": [],
             "tools": [{"type": "namespace", "name": "mcp__notes", "tools": [{"type": "function", "name": "remember", "parameters": {"type": "object"}}]}]}
            """#
        let request = try ModelRequest(openAI: try json(body))
        #expect(request.tools.map(\.namespace) == ["mcp__notes"])
        let call = ToolSelection.call("mcp__notes__remember", input: ["text": "hi"], among: request.tools)
        #expect(call == ModelToolCall(name: "remember", input: .arguments(["text": "hi"]), namespace: "mcp__notes"))
        // The Responses item names both.
        let item = OpenAIResponsesWire.callItem(call, id: "fc_1", callID: "call_1", status: "completed", complete: true)
        #expect(item["name"] == "remember")
        #expect(item["namespace"] == "mcp__notes")
        // A tool of that very name wins; an unknown one is called as written.
        #expect(ToolSelection.call("remember", input: [:], among: request.tools).namespace == nil)
        #expect(ToolSelection.call("mcp__other__x", input: [:], among: request.tools) == ModelToolCall(name: "mcp__other__x", input: .arguments([:])))
    }

    @Test func codexInCodeModeGetsAJavaScriptExecThatCallsExecCommand() throws {
        let request = try ModelRequest(openAI: try json(Self.codexCodeModeBody))
        #expect(request.tools.map(\.name) == ["exec", "wait"])
        #expect(request.tools.first?.kind == .custom)
        // The additional_tools item is tools, not conversation.
        #expect(request.messages.count == 1)
        let call = try #require(ToolSelection.shellCall(#"echo "hi" > hello.txt"#, description: nil, among: request.tools))
        #expect(call.name == "exec")
        #expect(
            call.input
                == .freeform(
                    #"""
                    const result = await tools.exec_command({ cmd: "echo \"hi\" > hello.txt" });
                    text(JSON.stringify(result));
                    """#))
    }

    @Test func anOlderShellToolTakesAnArgv() {
        let shell = OfferedTool(
            name: "shell", kind: .function,
            parameters: ["type": "object", "properties": ["command": ["type": "array", "items": ["type": "string"]], "workdir": ["type": "string"]]]
        )
        let call = ToolSelection.shellCall("ls -la", description: nil, among: [shell])
        #expect(call == ModelToolCall(name: "shell", input: .arguments(["command": ["bash", "-lc", "ls -la"]])))
    }

    @Test func withoutAShellToolTheTurnBecomesAnExplainingText() {
        let turn = ScriptTurn.shell("ls")
        let reply = turn.reply(offering: [OfferedTool(name: "Read", kind: .function)])
        guard case .message(let message) = reply else { Issue.record("expected a message"); return }
        #expect(message.toolCall == nil)
        #expect(message.text?.contains("offers no shell tool (tools: Read)") == true)
    }

    @Test func aRawToolCallIsSentAsWritten() {
        let tools = [OfferedTool(name: "Write", kind: .function), OfferedTool(name: "apply_patch", kind: .custom)]
        #expect(
            ToolSelection.call("Write", input: ["file_path": "a.txt"], among: tools) == ModelToolCall(name: "Write", input: .arguments(["file_path": "a.txt"])))
        #expect(
            ToolSelection.call("apply_patch", input: "*** Begin Patch", among: tools) == ModelToolCall(name: "apply_patch", input: .freeform("*** Begin Patch"))
        )
        #expect(ToolSelection.call("Other", input: "text", among: tools) == ModelToolCall(name: "Other", input: .arguments(["input": "text"])))
    }

    @Test func requestsWithoutToolsAreAuxiliary() throws {
        let title = try ModelRequest(anthropic: try json(#"{"model": "claude-haiku", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}"#))
        #expect(!title.isMain)
        #expect(!title.stream)
        let onlyBuiltins = try ModelRequest(openAI: try json(#"{"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}"#))
        #expect(!onlyBuiltins.isMain)
        #expect(onlyBuiltins.messages == [["role": "user", "content": "hi"]])
    }

    @Test func aBodyWithoutMessagesIsRejected() throws {
        #expect(throws: RequestError("messages: an array is required")) { try ModelRequest(anthropic: try json(#"{"model": "m"}"#)) }
        #expect(throws: RequestError("input: a string or an array is required")) { try ModelRequest(openAI: try json(#"{"input": 3}"#)) }
    }
}
