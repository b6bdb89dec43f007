"""The way back: the speaker account plays the room's mix in the output channel; captions go to the text chat."""
