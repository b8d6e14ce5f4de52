import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import Testing

@testable import CloudAgentModelServer

@Suite struct WireFormatTests {
    let textThenBash = AssistantMessage(
        text: "Writing the file.", toolCall: ModelToolCall(name: "Bash", input: .arguments(["command": "echo hi > hello.txt"]))
    )

    @Test func anEventIsEventThenDataThenABlankLine() {
        let event = ServerSentEvent(event: "message_stop", data: ["type": "message_stop"])
        #expect(event.encoded == "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
    }

    @Test func anthropicStreamsATextBlockThenAToolUseBlock() throws {
        let events = AnthropicMessagesWire.events(textThenBash, model: "claude-x", inputTokens: 100)
        #expect(
            events.map(\.event) == [
                "message_start",
                "content_block_start", "content_block_delta", "content_block_stop",
                "content_block_start", "content_block_delta", "content_block_stop",
                "message_delta", "message_stop",
            ])
        #expect(events.allSatisfy { $0.data.objectValue?["type"]?.stringValue == $0.event })
        let start = try #require(events[0].data.objectValue?["message"]?.objectValue)
        #expect(start["model"] == "claude-x")
        #expect(start["role"] == "assistant")
        #expect(start["content"] == [])
        #expect(events[2].data.objectValue?["delta"] == ["type": "text_delta", "text": "Writing the file."])
        let toolStart = try #require(events[4].data.objectValue)
        #expect(toolStart["index"] == 1)
        #expect(toolStart["content_block"]?.objectValue?["name"] == "Bash")
        #expect(toolStart["content_block"]?.objectValue?["id"]?.stringValue?.hasPrefix("toolu_") == true)
        let delta = try #require(events[5].data.objectValue?["delta"]?.objectValue)
        #expect(delta["type"] == "input_json_delta")
        let partial = try #require(delta["partial_json"]?.stringValue)
        #expect(try JSONText.decode(Data(partial.utf8)) == ["command": "echo hi > hello.txt"])
        #expect(events[7].data.objectValue?["delta"]?.objectValue?["stop_reason"] == "tool_use")
    }

    @Test func anthropicTextAloneEndsTheTurn() {
        let events = AnthropicMessagesWire.events(AssistantMessage(text: "Done."), model: "m", inputTokens: 1)
        #expect(events.count == 6)
        #expect(events[4].data.objectValue?["delta"]?.objectValue?["stop_reason"] == "end_turn")
    }

    @Test func aSlowStreamSendsTheTextWordByWord() {
        let message = AssistantMessage(text: "one two  three", chunkDelay: .milliseconds(10))
        #expect(message.textChunks == ["one ", "two  ", "three"])
        #expect(AssistantMessage(text: "one two").textChunks == ["one two"])
        let deltas = AnthropicMessagesWire.events(message, model: "m", inputTokens: 1).filter { $0.event == "content_block_delta" }
        #expect(deltas.count == 3)
    }

    @Test func anthropicNonStreamingMessage() throws {
        let message = try #require(AnthropicMessagesWire.message(textThenBash, model: "m", inputTokens: 5).objectValue)
        #expect(message["type"] == "message")
        #expect(message["stop_reason"] == "tool_use")
        let content = try #require(message["content"]?.arrayValue)
        #expect(content.count == 2)
        #expect(content[0] == ["type": "text", "text": "Writing the file."])
        #expect(content[1].objectValue?["input"] == ["command": "echo hi > hello.txt"])
    }

    @Test func anthropicErrorsHaveTheirTypeByStatus() {
        #expect(AnthropicMessagesWire.errorType(status: 400) == "invalid_request_error")
        #expect(AnthropicMessagesWire.errorType(status: 429) == "rate_limit_error")
        #expect(AnthropicMessagesWire.errorType(status: 529) == "overloaded_error")
        #expect(AnthropicMessagesWire.errorType(status: 500) == "api_error")
        let body = AnthropicMessagesWire.errorBody(ScriptedError(status: 500, message: "Boom", type: "custom_error")).objectValue
        #expect(body?["type"] == "error")
        #expect(body?["error"] == ["type": "custom_error", "message": "Boom"])
        let inStream = AnthropicMessagesWire.failureEvents(ScriptedError(status: 529, message: "Busy"), model: "m", inputTokens: 1)
        #expect(inStream.map(\.event) == ["message_start", "error"])
        #expect(inStream[1].data == ["type": "error", "error": ["type": "overloaded_error", "message": "Busy"]])
    }

    @Test func responsesStreamsAMessageItemThenAFunctionCallItem() throws {
        let message = AssistantMessage(
            text: "Writing.", toolCall: ModelToolCall(name: "exec_command", input: .arguments(["cmd": "echo hi > hello.txt"]))
        )
        let events = OpenAIResponsesWire.events(message, model: "gpt-x", inputTokens: 10)
        #expect(
            events.map(\.event) == [
                "response.created", "response.in_progress",
                "response.output_item.added", "response.content_part.added", "response.output_text.delta",
                "response.output_text.done", "response.content_part.done", "response.output_item.done",
                "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ])
        #expect(events.map { $0.data.objectValue?["sequence_number"] } == (0..<events.count).map { .number(Double($0)) })
        #expect(events.allSatisfy { $0.data.objectValue?["type"]?.stringValue == $0.event })
        let call = try #require(events[11].data.objectValue?["item"]?.objectValue)
        #expect(call["type"] == "function_call")
        #expect(call["name"] == "exec_command")
        #expect(call["status"] == "completed")
        #expect(call["call_id"]?.stringValue?.hasPrefix("call_") == true)
        #expect(try JSONText.decode(Data((call["arguments"]?.stringValue ?? "").utf8)) == ["cmd": "echo hi > hello.txt"])
        let completed = try #require(events.last?.data.objectValue?["response"]?.objectValue)
        #expect(completed["status"] == "completed")
        #expect(completed["output"]?.arrayValue?.count == 2)
        #expect(completed["usage"]?.objectValue?["input_tokens"] == 10)
        // Every item event of one item carries the same id.
        let messageID = events[2].data.objectValue?["item"]?.objectValue?["id"]
        #expect(events[4].data.objectValue?["item_id"] == messageID)
        #expect(events[7].data.objectValue?["item"]?.objectValue?["id"] == messageID)
    }

    @Test func responsesSendsAFreeformCallAsACustomToolCall() throws {
        let message = AssistantMessage(toolCall: ModelToolCall(name: "exec", input: .freeform("text('hi')")))
        let events = OpenAIResponsesWire.events(message, model: "m", inputTokens: 1)
        #expect(
            events.map(\.event) == [
                "response.created", "response.in_progress", "response.output_item.added",
                "response.custom_tool_call_input.delta", "response.custom_tool_call_input.done", "response.output_item.done",
                "response.completed",
            ])
        let item = try #require(events[5].data.objectValue?["item"]?.objectValue)
        #expect(item["type"] == "custom_tool_call")
        #expect(item["input"] == "text('hi')")
    }

    @Test func responsesErrors() {
        #expect(
            OpenAIResponsesWire.errorBody(ScriptedError(status: 400, message: "Bad")) == [
                "error": ["message": "Bad", "type": "invalid_request_error", "param": nil, "code": "invalid_request_error"]
            ])
        #expect(OpenAIResponsesWire.errorType(status: 503) == "server_error")
        let failed = OpenAIResponsesWire.failureEvents(
            ScriptedError(status: 500, message: "Broke", type: "context_length_exceeded"), model: "m", inputTokens: 1)
        #expect(failed.map(\.event) == ["response.created", "response.failed"])
        let response = failed[1].data.objectValue?["response"]?.objectValue
        #expect(response?["status"] == "failed")
        #expect(response?["error"] == ["code": "context_length_exceeded", "message": "Broke"])
    }

    @Test func responsesNonStreaming() throws {
        let response = try #require(OpenAIResponsesWire.response(AssistantMessage(text: "Hi."), model: "m", inputTokens: 3).objectValue)
        #expect(response["object"] == "response")
        #expect(response["status"] == "completed")
        let item = try #require(response["output"]?.arrayValue?.first?.objectValue)
        #expect(item["content"] == [["type": "output_text", "text": "Hi.", "annotations": []]])
    }
}
