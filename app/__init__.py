"""IssueLens: customer messages in, sentiment, UX/CX routing and recurring issues out."""
