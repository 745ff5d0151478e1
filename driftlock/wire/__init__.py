"""The public message contract (DESIGN §2): what producers send and subscribers receive."""
