"""What each administration may ask, why, and through which clients."""
